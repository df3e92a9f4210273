-- wrk script: isFollowing of a uniform follower (1..100000) and a Zipf-ish followee, sent with
-- variables as clients (and follow-bench) send them. floor(N^u) for a uniform u is log-uniform over
-- 1..N: the density of k falls as 1/k, a Zipf(1)-like law.
local users = tonumber(os.getenv("USERS") or "100000")
local query = "query($a: ID!, $b: ID!) { isFollowing(followerId: $a, followeeId: $b) }"
local headers = { ["Content-Type"] = "application/json" }

request = function()
  local a = math.random(1, users)
  local b = math.floor(users ^ math.random())
  if b < 1 then b = 1 end
  local body = string.format('{"query":"%s","variables":{"a":"%d","b":"%d"}}', query, a, b)
  return wrk.format("POST", "/graphql", headers, body)
end

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "check.lua")
