"""The server-side idempotent append: ``GET`` dedup key, else ``XADD`` + ``SET EX``.

One call appends any number of entries of one partition. Every key it touches carries that
partition's hash tag, so it is valid on Redis Cluster and on Dragonfly (which requires
declared keys). Redis runs a script atomically, so two producers racing on one message id
append it once.
"""

from __future__ import annotations

import hashlib

# KEYS[1] = partition stream; KEYS[2..n] = dedup keys.
# ARGV[1] = dedup TTL in seconds; ARGV[2] = entry field name; ARGV[i+1] = envelope of KEYS[i].
# Returns {added_1, id_1, added_2, id_2, ...} with added 1 for new, 0 for duplicate.
APPEND_LUA = """
local out = {}
for i = 2, #KEYS do
  local prior = redis.call('GET', KEYS[i])
  if prior then
    out[#out + 1] = 0
    out[#out + 1] = prior
  else
    local id = redis.call('XADD', KEYS[1], '*', ARGV[2], ARGV[i + 1])
    redis.call('SET', KEYS[i], id, 'EX', ARGV[1])
    out[#out + 1] = 1
    out[#out + 1] = id
  end
end
return out
"""

APPEND_SHA = hashlib.sha1(APPEND_LUA.encode()).hexdigest()
