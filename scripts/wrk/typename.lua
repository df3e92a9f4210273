-- wrk script: the floor of the HTTP and GraphQL layers, `{ __typename }`.
wrk.method = "POST"
wrk.body = '{"query":"{ __typename }"}'
wrk.headers["Content-Type"] = "application/json"

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "check.lua")
