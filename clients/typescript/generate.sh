#!/usr/bin/env bash
# Generates the TypeScript SDK's code into src/gen/ (see ../generate.sh and ../../buf.gen.yaml).
exec "$(dirname "$0")/../generate.sh" typescript
