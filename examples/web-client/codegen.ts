import type { CodegenConfig } from '@graphql-codegen/cli';

// The schema is the repository's own schema.graphql (generated from the Rust code). FOLLOW_SCHEMA
// points codegen at another copy, e.g. to try a schema change before it lands.
const schema = process.env['FOLLOW_SCHEMA'] ?? '../../schema.graphql';

const config: CodegenConfig = {
  schema,
  // Every graphql(`...`) call in src/ is an operation, checked against the schema.
  documents: ['src/**/*.ts', '!src/gql/**/*'],
  // No operation found is an error too: it means the documents stopped being picked up.
  ignoreNoDocuments: false,
  // Any failure (an unknown field or argument, a type mismatch, a parse error) exits non-zero.
  noSilentErrors: true,
  generates: {
    'src/gql/': {
      preset: 'client',
      presetConfig: {
        // Operations select fields directly; no fragment masking to unwrap.
        fragmentMasking: false,
      },
      config: {
        // DateTime is an RFC 3339 string on the wire.
        scalars: { DateTime: 'string' },
        // A new custom scalar in the schema must be mapped here first.
        strictScalars: true,
        enumsAsTypes: true,
        useTypeImports: true,
        // Relative imports in the generated files end in .js, as NodeNext resolution wants.
        emitLegacyCommonJSImports: false,
      },
    },
  },
};

export default config;
