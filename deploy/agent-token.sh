#!/bin/bash
# Runs the Stakpak agent server on loopback with its bearer token, and hands
# the token to the jetpilot worker through a file, never through the logs.
#
# The server makes a new random token every time it starts and prints it
# only with --show-token, on its standard output: this wrapper takes that
# line out of the output, writes the token to $TOKEN_FILE (atomically, mode
# 0640: the worker reads it through a shared group) and passes every other
# line on. When the server restarts, the new token replaces the old one;
# the worker reads the file again as soon as the server refuses the old
# token (jetpilot worker --agent-token-file).
#
# Usage: agent-token.sh STAKPAK_COMMAND...   (e.g. /usr/local/bin/stakpak)
# Environment: TOKEN_FILE (default /run/agent-token/token),
#              AGENT_BIND (default 127.0.0.1:4096), and the server's own
#              (STAKPAK_API_KEY or a provider's key, ...).
set -euo pipefail

token_file="${TOKEN_FILE:-/run/agent-token/token}"
bind="${AGENT_BIND:-127.0.0.1:4096}"
if [ "$#" -eq 0 ]; then
	echo "usage: agent-token.sh STAKPAK_COMMAND..." >&2
	exit 2
fi

umask 027
rm -f "$token_file"
out="$(mktemp -d)/out"
mkfifo "$out"
"$@" up --foreground --non-interactive --bind "$bind" --show-token >"$out" 2>&1 &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null || true' TERM INT

while IFS= read -r line; do
	case "$line" in
	*"Auth token"*"Bearer "*)
		printf '%s\n' "${line##*Bearer }" >"$token_file.tmp"
		mv -f "$token_file.tmp" "$token_file"
		echo "agent-token.sh: the server's token is in $token_file"
		;;
	*) printf '%s\n' "$line" ;;
	esac
done <"$out"
wait "$pid"
