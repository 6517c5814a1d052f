// The x-* keywords of jetpilot's JSON Schemas. They are annotations: they
// assert nothing, and a document is valid or invalid exactly as it is
// without them. jetpilot's Go validator (package schemas, messages.go)
// reads them to word its error messages. Ajv's strict mode refuses keywords
// it does not know, so register these before compiling the schemas:
//
//   import Ajv2020 from "ajv/dist/2020.js";
//   import addFormats from "ajv-formats";
//   import {addJetpilotKeywords} from "./keywords.mjs";
//   const ajv = addJetpilotKeywords(addFormats(new Ajv2020({strict: true})));
export const jetpilotKeywords = [
  // What a value must be, in words ("a job id: 1-128 of A-Z a-z 0-9 . _ -"),
  // for a type or pattern failure.
  {keyword: "x-hint", schemaType: "string"},
  // What a missing required property is for ("is required: ...").
  {keyword: "x-required-hint", schemaType: "string"},
  // What the keys of an object with patternProperties must be.
  {keyword: "x-key-hint", schemaType: "string"},
  // The message for a failed "not".
  {keyword: "x-not-hint", schemaType: "string"},
  // The property names of a oneOf's alternatives ("all", "decisions").
  {keyword: "x-one-of", schemaType: "array", metaSchema: {type: "array", items: {type: "string"}}},
  // Whose limit a maxItems/maxLength/maxProperties is ("the policy's").
  {keyword: "x-limit-owner", schemaType: "string"},
  // The most bytes the value may take encoded (checked by the Go decoder;
  // the schema keeps the number for the message).
  {keyword: "x-max-bytes", schemaType: "number", metaSchema: {type: "integer", minimum: 1}},
];

export function addJetpilotKeywords(ajv) {
  for (const k of jetpilotKeywords) {
    ajv.addKeyword(k);
  }
  return ajv;
}
