-- Shared by the wrk scripts here. CHECK=1: count and print error answers (costs the client a Lua call
-- per response).
local errors = 0
if os.getenv("CHECK") then response = function(status, _, body)
  if status ~= 200 or body:find('"errors"', 1, true) then
    errors = errors + 1
    if errors <= 3 then io.stderr:write(status .. " " .. body .. "\n") end
  end
end
end
