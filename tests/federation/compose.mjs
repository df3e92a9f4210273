// Proves that follow-service's subgraph SDL composes into an Apollo Federation v2 supergraph.
//
// Composes ../../subgraph.graphql (what `_service { sdl }` answers; override the path with
// FOLLOW_SUBGRAPH_SDL=/path/to/sdl.graphql) with accounts.graphql, a small second subgraph, using
// Apollo's own composition library (@apollo/composition). Exits non-zero, printing every
// composition error and hint, when composition fails or the composed API schema lacks the fields
// it must have. On success writes the supergraph SDL to target/federation/supergraph.graphql
// (relative to the repo root) and prints a one-line summary.
//
// Run: scripts/check-federation.sh (or `npm ci && node compose.mjs` in this folder).

import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { composeServices } from '@apollo/composition';
import { Kind, parse } from 'graphql';

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(here, '..', '..');

const followsPath = process.env.FOLLOW_SUBGRAPH_SDL
  ? resolve(process.env.FOLLOW_SUBGRAPH_SDL)
  : resolve(repoRoot, 'subgraph.graphql');
const accountsPath = resolve(here, 'accounts.graphql');
const outDir = resolve(repoRoot, 'target', 'federation');
const outPath = resolve(outDir, 'supergraph.graphql');

function fail(message) {
  console.error(`federation: FAILED: ${message}`);
  process.exit(1);
}

function load(name, path) {
  let text;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    fail(`cannot read the ${name} subgraph SDL at ${path}: ${err.message}`);
  }
  try {
    return parse(text);
  } catch (err) {
    fail(`the ${name} subgraph SDL at ${path} does not parse: ${err.message}`);
  }
}

function printHints(hints) {
  for (const hint of hints ?? []) {
    const level = hint.definition?.level?.name ?? 'HINT';
    const code = hint.definition?.code ?? '?';
    console.error(`hint [${level} ${code}]: ${hint.message}`);
  }
}

const services = [
  { name: 'follows', url: 'http://follows/graphql', typeDefs: load('follows', followsPath) },
  { name: 'accounts', url: 'http://accounts/graphql', typeDefs: load('accounts', accountsPath) },
];

const started = performance.now();
const result = composeServices(services);
const ms = Math.round(performance.now() - started);

if (result.errors) {
  console.error(
    `federation: composition of ${followsPath} with ${accountsPath} failed with ` +
      `${result.errors.length} error(s):`,
  );
  for (const err of result.errors) {
    const code = err.extensions?.code ?? 'ERROR';
    console.error(`error [${code}]: ${err.message}`);
  }
  printHints(result.hints);
  process.exit(1);
}

printHints(result.hints);

// What clients of the router see: the API schema (federation machinery removed).
const api = result.schema.toAPISchema().toGraphQLJSSchema();
const problems = [];

const user = api.getType('User');
const userFields = user?.getFields?.() ?? {};
if (!user) problems.push('the API schema has no type User');
for (const [field, from] of [
  ['id', 'both'],
  ['handle', 'both'],
  ['displayName', 'both'],
  ['email', 'accounts'],
  ['followerCount', 'follows'],
  ['followingCount', 'follows'],
  ['followers', 'follows'],
  ['following', 'follows'],
]) {
  if (user && !userFields[field]) problems.push(`User.${field} (from ${from}) is missing`);
}

const queryFields = api.getQueryType()?.getFields() ?? {};
for (const [field, from] of [
  ['me', 'accounts'],
  ['userByEmail', 'accounts'],
  ['viewer', 'follows'],
  ['user', 'follows'],
]) {
  if (!queryFields[field]) problems.push(`Query.${field} (from ${from}) is missing`);
}

// In the supergraph, User must be an entity keyed by id in both subgraphs, and the fields each
// subgraph owns must be routed to it (@join__field(graph: ...)).
const supergraph = parse(result.supergraphSdl);
const userDef = supergraph.definitions.find(
  (d) => d.kind === Kind.OBJECT_TYPE_DEFINITION && d.name.value === 'User',
);
const argValue = (directive, name) =>
  directive.arguments?.find((a) => a.name.value === name)?.value?.value;
const joinTypeKeys = new Map(
  (userDef?.directives ?? [])
    .filter((d) => d.name.value === 'join__type')
    .map((d) => [argValue(d, 'graph'), argValue(d, 'key')]),
);
for (const graph of ['FOLLOWS', 'ACCOUNTS']) {
  if (joinTypeKeys.get(graph) !== 'id') {
    problems.push(`supergraph User is not keyed by "id" in ${graph} (join__type: ${joinTypeKeys.get(graph)})`);
  }
}
const graphsOf = (field) =>
  (userDef?.fields?.find((f) => f.name.value === field)?.directives ?? [])
    .filter((d) => d.name.value === 'join__field')
    .map((d) => argValue(d, 'graph'));
for (const [field, graph] of [
  ['email', 'ACCOUNTS'],
  ['followerCount', 'FOLLOWS'],
  ['followers', 'FOLLOWS'],
]) {
  const graphs = graphsOf(field);
  if (graphs.length !== 1 || graphs[0] !== graph) {
    problems.push(`supergraph User.${field} should be resolved by ${graph} only, is by [${graphs.join(', ')}]`);
  }
}

if (problems.length > 0) {
  for (const p of problems) console.error(`federation: ${p}`);
  fail(`the composed schema lacks ${problems.length} thing(s) it must have`);
}

mkdirSync(outDir, { recursive: true });
writeFileSync(outPath, result.supergraphSdl);

const hintCount = result.hints?.length ?? 0;
console.log(
  `federation: OK: follows + accounts composed in ${ms} ms; API schema has ` +
    `${Object.keys(api.getTypeMap()).filter((n) => !n.startsWith('__')).length} types, ` +
    `User has ${Object.keys(userFields).length} fields (email from accounts, followerCount/followers from follows), ` +
    `Query has ${Object.keys(queryFields).length} fields incl. me; ${hintCount} hint(s); ` +
    `supergraph SDL written to ${relative(repoRoot, outPath)}`,
);
