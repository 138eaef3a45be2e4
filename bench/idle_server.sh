#!/bin/sh
# A minimal handshake-era MCP server over stdio in POSIX sh, for the 1,000-idle-servers check (bench/scale.py):
# one process costs ~0.3 MiB, so the gateway's own per-server cost is what the check sees. It answers
# `initialize`, `ping`, `tools/list` (one tool, `echo`) and `tools/call` (a fixed text), and -32601 to anything
# else (so the gateway's `server/discover` probe takes it as handshake era). It reads the numeric `id` the
# gateway sends (its ids are integers) and ignores notifications. Not a general JSON parser; never a model.
while IFS= read -r line; do
  case "$line" in
    *'"id":'*) ;;
    *) continue ;;
  esac
  id=${line#*\"id\":}
  id=${id%%[,\}]*}
  case "$line" in
    *'"method":"initialize"'*)
      result='{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"bench-idle","version":"1.0"}}' ;;
    *'"method":"ping"'*) result='{}' ;;
    *'"method":"tools/list"'*)
      result='{"tools":[{"name":"echo","description":"Answers ok","inputSchema":{"type":"object"}}]}' ;;
    *'"method":"tools/call"'*) result='{"content":[{"type":"text","text":"ok"}]}' ;;
    *)
      printf '{"jsonrpc":"2.0","id":%s,"error":{"code":-32601,"message":"method not found"}}\n' "$id"
      continue ;;
  esac
  printf '{"jsonrpc":"2.0","id":%s,"result":%s}\n' "$id" "$result"
done
