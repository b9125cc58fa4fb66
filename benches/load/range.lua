-- wrk script: random 1 MiB ranges of one blob, like HfFileSystem's block reads.
-- BENCH_RANGE_SIZE = blob size in bytes (required); BENCH_RANGE_LEN = range length (1 MiB).
-- Each wrk thread gets its own deterministic seed.
local size = tonumber(os.getenv("BENCH_RANGE_SIZE"))
local len = tonumber(os.getenv("BENCH_RANGE_LEN") or "1048576")
local counter = 0

function setup(thread)
  thread:set("seed", 20240601 + counter)
  counter = counter + 1
end

function init(args)
  math.randomseed(seed)
end

function request()
  local a = math.random(0, size - len)
  return wrk.format("GET", nil, { ["Range"] = "bytes=" .. a .. "-" .. (a + len - 1) })
end
