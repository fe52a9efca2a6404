-- wrk script for bench/load.sh: POSTs a JSON webhook body, optionally authenticated.
--
--   wrk -t2 -c32 -d10s -s bench/unique.lua URL -- BODY MODE NONCE [AUTH]
--
--   BODY    the JSON fixture; its trailing newline is dropped.
--   MODE    unique: every request carries a new event.id (the gateway's forward path);
--           dup:    every request carries the fixture's own id (the replay path).
--   NONCE   an integer in [10000, 89999], different for every wrk run of one load.sh
--           invocation, so no id repeats across warm-up, rounds and targets.
--   AUTH    optional, what hookgate's `[sources.verify]` expects:
--           hmac:SECRET   `X-Signature: <hex HMAC-SHA256(SECRET, body)>` on every request.
--                         wrk's LuaJIT has no HMAC of its own: it is computed by libcrypto
--                         (which wrk links for TLS) through LuaJIT's FFI, ~2 us a request.
--                         Without FFI or libcrypto, init() fails with "cannot sign".
--           token:SECRET  `X-Hookgate-Token: SECRET` on every request.
--
-- A unique id is the 16-digit number <NONCE:5><thread:2><counter:9> (below 2^53, so any
-- JSON parser keeps it exact); a string id in the fixture becomes the same digits as a
-- string. Every body has the same length.
--
-- response() counts non-2xx answers and answers carrying `hookgate-duplicate`; done()
-- prints one line: "RESULT key=value ...", read by load.sh.

local threads = {}

function setup(thread)
   threads[#threads + 1] = thread
   thread:set("tid", #threads)
end

local function fail(msg)
   io.stderr:write("unique.lua: " .. msg .. "\n")
   os.exit(2)
end

-- Returns sign(body) -> lowercase hex HMAC-SHA256, or nil and the reason.
local function hmac_signer(secret)
   local ok, ffi = pcall(require, "ffi")
   if not ok then return nil, "this wrk's Lua has no FFI (not LuaJIT)" end
   pcall(ffi.cdef, [[
      typedef struct evp_md_st EVP_MD;
      typedef struct hmac_ctx_st HMAC_CTX;
      const EVP_MD *EVP_sha256(void);
      HMAC_CTX *HMAC_CTX_new(void);
      int HMAC_Init_ex(HMAC_CTX *ctx, const void *key, int len, const EVP_MD *md, void *impl);
      int HMAC_Update(HMAC_CTX *ctx, const unsigned char *data, size_t len);
      int HMAC_Final(HMAC_CTX *ctx, unsigned char *md, unsigned int *len);
   ]])
   local lib
   for _, name in ipairs({ "", "libcrypto.so.3", "crypto" }) do
      local found, l = pcall(function()
         local l = (name == "") and ffi.C or ffi.load(name)
         assert(l.HMAC_CTX_new and l.HMAC_Init_ex and l.HMAC_Update and l.HMAC_Final and l.EVP_sha256)
         return l
      end)
      if found then lib = l; break end
   end
   if not lib then return nil, "libcrypto's HMAC functions are not reachable through FFI" end

   local ctx = lib.HMAC_CTX_new()
   if ctx == nil or lib.HMAC_Init_ex(ctx, secret, #secret, lib.EVP_sha256(), nil) ~= 1 then
      return nil, "HMAC_Init_ex failed"
   end
   local mac = ffi.new("unsigned char[32]")
   local len = ffi.new("unsigned int[1]")
   local hex = string.rep("%02x", 32)
   return function(data)
      -- a NULL key and md restart the MAC with the key given above
      lib.HMAC_Init_ex(ctx, nil, 0, nil, nil)
      lib.HMAC_Update(ctx, data, #data)
      lib.HMAC_Final(ctx, mac, len)
      return string.format(hex, ffi.string(mac, 32):byte(1, 32))
   end
end

local head      -- request line and fixed headers, without Content-Length / X-Signature
local prefix    -- body up to the id's first digit
local suffix    -- body after the id
local quote     -- '"' for a string id, "" for a numeric one
local sign      -- nil, or the HMAC function
local token     -- nil, or the X-Hookgate-Token value
local fixed     -- dup mode: the one request, prebuilt
local nonce
local counter = 0

non2xx = 0      -- globals: read by done() through thread:get()
bad_status = 0  -- the last non-2xx status seen
dup_answers = 0

local function build(body)
   local h = head .. "Content-Length: " .. #body .. "\r\n"
   if sign then h = h .. "X-Signature: " .. sign(body) .. "\r\n" end
   if token then h = h .. "X-Hookgate-Token: " .. token .. "\r\n" end
   return h .. "\r\n" .. body
end

function init(args)
   local path, mode, auth = args[1], args[2], args[4] or ""
   nonce = tonumber(args[3])
   if not path or (mode ~= "unique" and mode ~= "dup") then
      fail("usage: -- BODY unique|dup NONCE [hmac:SECRET|token:SECRET]")
   end
   if not nonce or nonce < 10000 or nonce > 89999 or nonce % 1 ~= 0 then
      fail("NONCE must be an integer in [10000, 89999]")
   end
   local f = io.open(path, "rb") or fail("cannot read " .. path)
   local body = f:read("*a"):gsub("[\r\n]+$", "")
   f:close()

   local scheme, secret = auth:match("^(%a+):(.+)$")
   if scheme == "hmac" then
      local why
      sign, why = hmac_signer(secret)
      if not sign then fail("cannot sign requests: " .. why) end
   elseif scheme == "token" then
      token = secret
   elseif auth ~= "" then
      fail("AUTH must be hmac:SECRET or token:SECRET")
   end

   local host = wrk.host
   if wrk.port then host = host .. ":" .. wrk.port end
   head = "POST " .. wrk.path .. " HTTP/1.1\r\n" ..
          "Host: " .. host .. "\r\n" ..
          "Content-Type: application/json\r\n" ..
          "User-Agent: hookgate-bench\r\n"

   if mode == "dup" then
      fixed = build(body)
      return
   end

   -- locate event.id: the first "id" member after `"event": {`
   local ev = body:find('"event"%s*:%s*{') or fail('no "event": { ... } in ' .. path)
   local _, colon = body:find('"id"%s*:%s*', ev)
   if not colon then fail("no event.id in " .. path) end
   local first, last = body:find('^%-?%d+', colon + 1)
   quote = ""
   if not first then
      first, last = body:find('^"[^"]*"', colon + 1)
      if not first then fail("event.id is neither a number nor a string") end
      quote = '"'
   end
   prefix = body:sub(1, first - 1) .. quote
   suffix = quote .. body:sub(last + 1)
end

function request()
   if fixed then return fixed end
   counter = counter + 1
   return build(prefix .. string.format("%05d%02d%09d", nonce, tid, counter) .. suffix)
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
      bad_status = status
   end
   if headers["hookgate-duplicate"] or headers["Hookgate-Duplicate"] then
      dup_answers = dup_answers + 1
   end
end

function done(summary, latency, requests)
   local bad, last_bad, dups = 0, 0, 0
   for _, t in ipairs(threads) do
      bad = bad + (t:get("non2xx") or 0)
      dups = dups + (t:get("dup_answers") or 0)
      local s = t:get("bad_status") or 0
      if s ~= 0 then last_bad = s end
   end
   local e = summary.errors
   io.write(string.format(
      "RESULT requests=%d rps=%.1f p50_us=%d p99_us=%d non2xx=%d bad_status=%d " ..
      "dup_answers=%d sock_err=%d\n",
      summary.requests, summary.requests / (summary.duration / 1e6),
      latency:percentile(50), latency:percentile(99), bad, last_bad, dups,
      e.connect + e.read + e.write + e.timeout))
end
