// Compiles every schemas/*.v1.json in Ajv's JSON Schema 2020-12 mode with
// strict: true and ajv-formats (formats asserted, as the Go validator
// does), and validates every JSON example in schemas/examples against the
// schema its name starts with. Exits 1 naming each failure.
import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";
import {readFileSync, readdirSync} from "node:fs";
import {addJetpilotKeywords} from "./keywords.mjs";

const dir = new URL("../", import.meta.url);
const examples = new URL("../examples/", import.meta.url);
let failed = 0;
const fail = (what, msg) => {
  failed++;
  console.error(`FAIL ${what}: ${msg}`);
};

const ajv = addJetpilotKeywords(addFormats(new Ajv2020({strict: true, allowUnionTypes: true, allErrors: true})));
const schemas = new Map(); // kind ("job", "cancel_reply") -> validate
for (const file of readdirSync(dir).filter((f) => f.endsWith(".v1.json")).sort()) {
  try {
    schemas.set(file.slice(0, -".v1.json".length), ajv.compile(JSON.parse(readFileSync(new URL(file, dir), "utf8"))));
    console.log(`ok   ${file} compiles (Ajv 2020, strict)`);
  } catch (e) {
    fail(file, e.message);
  }
}
if (schemas.size === 0) {
  fail("schemas", "no *.v1.json found");
}

// "cancel_reply-error.json" is a cancel_reply, "job-full.json" a job; the
// longest kind that prefixes the name wins. The signing vector is no message.
const kinds = readdirSync(dir).filter((f) => f.endsWith(".v1.json")).map((f) => f.slice(0, -".v1.json".length))
  .sort((a, b) => b.length - a.length);
for (const file of readdirSync(examples).filter((f) => f.endsWith(".json") && f !== "signing-vector.json").sort()) {
  const base = file.slice(0, -".json".length);
  const kind = kinds.find((k) => base === k || base.startsWith(k + "-"));
  if (!kind) {
    fail(`examples/${file}`, "names no schema");
    continue;
  }
  const validate = schemas.get(kind);
  if (!validate) {
    fail(`examples/${file}`, `its schema ${kind}.v1.json did not compile`);
  } else if (!validate(JSON.parse(readFileSync(new URL(file, examples), "utf8")))) {
    fail(`examples/${file}`, ajv.errorsText(validate.errors));
  } else {
    console.log(`ok   examples/${file} is a valid ${kind}`);
  }
}
process.exit(failed ? 1 : 0);
