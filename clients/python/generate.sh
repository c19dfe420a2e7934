#!/usr/bin/env bash
# Generates the Python SDK's code into steward_client/gen/ (see ../generate.sh and ../../buf.gen.yaml).
exec "$(dirname "$0")/../generate.sh" python
