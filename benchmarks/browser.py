"""The browser-like request every load generator here sends.

Plain ``wrk`` sends two headers, which flatters every proxy; real browsers send
about ten, ~600 bytes. One list, used by the wrk script, the hold client, the
probe and the parser micro benchmarks, so they all measure the same request.
"""

HEADERS: list[tuple[str, str]] = [
    (
        "User-Agent",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.0.0 Safari/537.36",
    ),
    (
        "Accept",
        "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
    ),
    ("Accept-Language", "en-US,en;q=0.9,de;q=0.8"),
    ("Accept-Encoding", "gzip, deflate, br"),
    (
        "Cookie",
        "session=8f3b2c1d9e7a4f6b0c5d2e1f3a4b5c6d; csrftoken=Zx81kq0PqLr3NvB2yT7w; "
        "_ga=GA1.1.1234567890.1700000000",
    ),
    ("Referer", "https://shop.example.com/products/index.html?page=2&sort=price"),
    ("Cache-Control", "max-age=0"),
    ("Sec-Fetch-Dest", "document"),
    ("Sec-Fetch-Mode", "navigate"),
    ("Sec-Fetch-Site", "same-origin"),
    ("Sec-Fetch-User", "?1"),
    ("Upgrade-Insecure-Requests", "1"),
]


def request_head(path: str = "/", host: str = "127.0.0.1", *, close: bool = False) -> bytes:
    """The full request head as a browser would send it (GET, HTTP/1.1)."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in HEADERS]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def wrk_script(*, close: bool = False, timeline: str | None = None) -> str:
    """A wrk Lua script that sends ``HEADERS`` (and ``Connection: close`` if asked).

    With ``timeline`` (a file path), each response is also counted per 100 ms
    bucket of CLOCK_MONOTONIC (via LuaJIT's FFI, so the buckets line up with
    Python's ``time.monotonic()``): lines ``bucket_ms ok other`` are appended to
    the file. wrk then parses every response in Lua, which slows it down, so
    only the deploy scenario uses it, for every proxy alike.
    """
    out = ['wrk.method = "GET"']
    for name, value in HEADERS:
        out.append(f'wrk.headers["{name}"] = "{value}"')
    if close:
        out.append('wrk.headers["Connection"] = "close"')
    if timeline:
        out.append(
            f"""
local ffi = require("ffi")
pcall(ffi.cdef, [[
typedef struct {{ long tv_sec; long tv_nsec; }} fp_timespec;
int clock_gettime(int clk, fp_timespec *ts);
]])
local ts = ffi.new("fp_timespec")
local current, ok, other = -1, 0, 0
local out = nil

local function flush()
  if current >= 0 then
    if out == nil then out = io.open("{timeline}", "a") end
    out:write(string.format("%d %d %d\\n", current, ok, other))
    out:flush()
  end
end

function response(status, headers, body)
  ffi.C.clock_gettime(1, ts)
  local bucket = tonumber(ts.tv_sec) * 10 + math.floor(tonumber(ts.tv_nsec) / 100000000)
  if bucket ~= current then
    flush()
    current, ok, other = bucket, 0, 0
  end
  if status >= 200 and status < 400 then ok = ok + 1 else other = other + 1 end
end
"""
        )
    return "\n".join(out) + "\n"
