package console

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// cookieName is the session cookie: HttpOnly, SameSite=Strict, Secure
// over TLS.
const cookieName = "jetpilot_console"

type ctxKey struct{}

// view is what every page template gets.
type view struct {
	Page  string
	Title string
	User  User
	CSRF  string
	// Fragment: render only the page's main part (live refreshes).
	Fragment bool
	Data     any
}

var funcs = template.FuncMap{
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	"ago": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return time.Since(t).Round(time.Second).String() + " ago"
	},
	"json": func(v any) string {
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return fmt.Sprintf("(cannot show: %v)", err)
		}
		return string(b)
	},
	"rawjson": prettyJSON,
	"compact": func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			return "null"
		}
		return string(b)
	},
	"contains": func(list []string, s string) bool {
		for _, x := range list {
			if x == s {
				return true
			}
		}
		return false
	},
}

// render writes page with data; a fragment request gets the "main" block.
func (s *Server) render(w http.ResponseWriter, r *http.Request, page string, data any) {
	s.renderCode(w, r, http.StatusOK, page, data)
}

// renderCode is render with a status code.
func (s *Server) renderCode(w http.ResponseWriter, r *http.Request, code int, page string, data any) {
	t := s.pages[page]
	v := view{Page: page, Title: page, Data: data, Fragment: r.URL.Query().Get("fragment") == "1"}
	if sess, ok := r.Context().Value(ctxKey{}).(*session); ok {
		v.User, v.CSRF = sess.user, sess.csrf
	}
	name := "layout.html"
	if v.Fragment {
		name = "main"
	}
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, name, v); err != nil {
		s.log.Error("console: render page", "page", page, "err", err)
		http.Error(w, "could not render the page", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = buf.WriteTo(w)
}

// fail answers with a plain-text error; msg is escaped by being text/plain
// with nosniff.
func (s *Server) fail(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	fmt.Fprintln(w, msg)
}

// authed wraps h: a session is needed (pages redirect to the sign-in page),
// and a POST must come from this origin with the session's CSRF token;
// decide also needs approver rights (403 otherwise).
func (s *Server) authed(h http.HandlerFunc, decide bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var sess *session
		if c, err := r.Cookie(cookieName); err == nil {
			sess, _ = s.sessions.get(c.Value)
		}
		if sess == nil {
			if r.Method == http.MethodGet && r.Header.Get("Accept") != "text/event-stream" {
				http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
				return
			}
			s.fail(w, http.StatusUnauthorized, "sign in first")
			return
		}
		if r.Method == http.MethodPost {
			if !sameOrigin(r) {
				s.fail(w, http.StatusForbidden, "cross-origin request refused")
				return
			}
			r.Body = http.MaxBytesReader(w, r.Body, maxBody)
			tok := r.Header.Get("X-CSRF-Token")
			if tok == "" {
				tok = r.PostFormValue("csrf")
			}
			if subtle.ConstantTimeCompare([]byte(tok), []byte(sess.csrf)) != 1 {
				s.fail(w, http.StatusForbidden, "missing or wrong CSRF token: reload the page")
				return
			}
			if decide && !sess.user.CanDecide() {
				s.fail(w, http.StatusForbidden, fmt.Sprintf("%s is a viewer: only approvers may change anything", sess.user.Name))
				return
			}
		}
		h(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, sess)))
	}
}

// sameOrigin: a POST's Origin (or, without one, its Referer) names this
// host. Browsers send Origin on every POST; a request with neither is not
// from a browser page and is let through to the CSRF check.
func sameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		o = r.Header.Get("Referer")
	}
	if o == "" {
		return true
	}
	u, err := url.Parse(o)
	return err == nil && u.Host == r.Host
}

func userOf(r *http.Request) User {
	if sess, ok := r.Context().Value(ctxKey{}).(*session); ok {
		return sess.user
	}
	return User{}
}

type loginView struct {
	Next     string
	Error    string
	Token    bool
	Password bool
}

func (s *Server) loginPage(w http.ResponseWriter, r *http.Request) {
	s.render(w, r, "login", loginView{Next: safeNext(r.URL.Query().Get("next")), Token: s.cfg.Auth.Token != "", Password: s.cfg.Auth.Users != nil})
}

// safeNext keeps a post-login redirect on this site.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") {
		return "/jobs"
	}
	return next
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		s.fail(w, http.StatusForbidden, "cross-origin request refused")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	var (
		u  User
		ok bool
	)
	select {
	case s.checks <- struct{}{}:
		defer func() { <-s.checks }()
	case <-r.Context().Done():
		return
	}
	if tok := r.PostFormValue("token"); tok != "" {
		u, ok = s.cfg.Auth.checkToken(tok)
	} else if s.cfg.Auth.Users != nil {
		u, ok = s.cfg.Auth.Users.check(r.PostFormValue("user"), r.PostFormValue("password"))
	}
	lv := loginView{Next: safeNext(r.PostFormValue("next")), Token: s.cfg.Auth.Token != "", Password: s.cfg.Auth.Users != nil}
	if !ok {
		s.log.Info("console: sign-in refused", "user", r.PostFormValue("user"), "remote", r.RemoteAddr)
		lv.Error = "wrong name, password or token"
		s.renderCode(w, r, http.StatusUnauthorized, "login", lv)
		return
	}
	id, _, err := s.sessions.create(u)
	if err != nil {
		s.fail(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	s.log.Info("console: signed in", "user", u.Name, "role", u.Role)
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: id, Path: "/", HttpOnly: true, Secure: r.TLS != nil,
		SameSite: http.SameSiteStrictMode, MaxAge: int(s.cfg.SessionTTL.Seconds())})
	http.Redirect(w, r, lv.Next, http.StatusSeeOther)
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie(cookieName); err == nil {
		s.sessions.remove(c.Value)
	}
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: "/", HttpOnly: true, Secure: r.TLS != nil,
		SameSite: http.SameSiteStrictMode, MaxAge: -1})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// prettyJSON indents JSON for people, with <, > and & as themselves (the
// template escapes them for HTML), not as \u003c: what an approver reads
// is what the agent wrote. Text that is not JSON is shown as it is.
func prettyJSON(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) != nil {
		return string(b)
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if enc.Encode(v) != nil {
		return string(b)
	}
	return strings.TrimRight(out.String(), "\n")
}
