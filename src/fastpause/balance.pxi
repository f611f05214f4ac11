# Load balancing: choosing one of a route's upstreams for a request.
#
# Every policy first narrows the choice to a tier: upstreams that are available
# (healthy, not draining, not passively marked down); when there are none, the
# ones that are only passively marked down (a connect attempt is then the
# quickest way to notice one is back, as NGINX does). Upstreams that failed an
# active health check or are being drained are never chosen.

from libc.math cimport log

cdef enum LbPolicy:
    LB_ROUND_ROBIN
    LB_LEAST_CONN
    LB_RANDOM_TWO
    LB_FIRST
    LB_IP_HASH
    LB_COOKIE

_POLICIES = {
    "round_robin": LB_ROUND_ROBIN,
    "least_conn": LB_LEAST_CONN,
    "random_two": LB_RANDOM_TWO,
    "first": LB_FIRST,
    "ip_hash": LB_IP_HASH,
    "cookie": LB_COOKIE,
}
LB_POLICIES = tuple(_POLICIES)


cdef inline uint64_t _fnv1a(const unsigned char* p, Py_ssize_t n, uint64_t h) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ p[i]) * <uint64_t>0x100000001b3
    return h


cdef inline uint64_t _mix(uint64_t z) noexcept nogil:
    """splitmix64's finalizer: spreads similar inputs over the whole range."""
    z = (z ^ (z >> 30)) * <uint64_t>0xbf58476d1ce4e5b9
    z = (z ^ (z >> 27)) * <uint64_t>0x94d049bb133111eb
    return z ^ (z >> 31)


cdef class Balancer:
    """One route's load-balancing policy and its per-upstream bookkeeping."""

    def __cinit__(self, str policy, list upstreams, weights, str cookie_name):
        cdef Py_ssize_t i
        cdef Upstream up
        cdef bytes address
        if policy not in _POLICIES:
            raise ValueError(f"unknown lb policy {policy!r}: expected one of "
                             f"{', '.join(LB_POLICIES)}")
        weights = list(weights) if weights is not None else [1] * len(upstreams)
        if len(weights) != len(upstreams) or any(not isinstance(w, int) or w < 1
                                                 for w in weights):
            raise ValueError("weights must be one integer >= 1 per upstream")
        self.policy = _POLICIES[policy]
        self.policy_name = policy
        self.upstreams = upstreams
        self.n = len(upstreams)
        self.weights = <long long*>malloc(self.n * sizeof(long long))
        self.current = <long long*>malloc(self.n * sizeof(long long))
        self.seeds = <uint64_t*>malloc(self.n * sizeof(uint64_t))
        self.candidates = <Py_ssize_t*>malloc(self.n * sizeof(Py_ssize_t))
        if not (self.weights and self.current and self.seeds and self.candidates):
            raise MemoryError()
        self.tokens = []
        for i in range(self.n):
            up = upstreams[i]
            address = up.address.encode("ascii")
            self.weights[i] = weights[i]
            self.current[i] = 0
            self.seeds[i] = _mix(_fnv1a(address, len(address), <uint64_t>0xcbf29ce484222325))
            self.tokens.append(b"%016x" % self.seeds[i])
        self.rng = _mix(<uint64_t>id(self)) | 1
        self.cookie_name = cookie_name.encode("ascii")

    def __dealloc__(self):
        free(self.weights)
        free(self.current)
        free(self.seeds)
        free(self.candidates)

    @property
    def weight_list(self):
        return [self.weights[i] for i in range(self.n)]

    cdef Py_ssize_t _collect(self, double now):
        """Fill ``candidates`` with the best tier's upstream indexes; returns how many."""
        cdef Py_ssize_t i, k = 0
        cdef Upstream u
        for i in range(self.n):
            u = self.upstreams[i]
            if u.available(now):
                self.candidates[k] = i
                k += 1
        if k:
            return k
        for i in range(self.n):
            u = self.upstreams[i]
            if u.healthy and not u.draining:
                self.candidates[k] = i
                k += 1
        return k

    cdef Upstream pick(self, double now, bytes client_ip):
        """An upstream by the policy (the cookie policy's fallback is round robin)."""
        cdef Py_ssize_t k = self._collect(now), i
        if k == 0:
            return None
        if self.policy == LB_ROUND_ROBIN or self.policy == LB_COOKIE:
            i = self._smooth_weighted(k)
        elif self.policy == LB_LEAST_CONN:
            i = self._least_conn(k)
        elif self.policy == LB_RANDOM_TWO:
            i = self._random_two(k)
        elif self.policy == LB_IP_HASH:
            i = self._rendezvous(k, client_ip)
        else:
            i = self.candidates[0]
        return self.upstreams[i]

    cdef Py_ssize_t _smooth_weighted(self, Py_ssize_t k) noexcept:
        """NGINX's smooth weighted round robin: weights honored, picks interleaved."""
        cdef Py_ssize_t j, i, best = -1
        cdef long long total = 0
        for j in range(k):
            i = self.candidates[j]
            self.current[i] += self.weights[i]
            total += self.weights[i]
            if best < 0 or self.current[i] > self.current[best]:
                best = i
        self.current[best] -= total
        return best

    cdef bint _less_loaded(self, Py_ssize_t a, Py_ssize_t b):
        """a carries fewer exchanges than b per unit of weight."""
        return ((<Upstream>self.upstreams[a]).n_active * self.weights[b]
                < (<Upstream>self.upstreams[b]).n_active * self.weights[a])

    cdef Py_ssize_t _least_conn(self, Py_ssize_t k):
        """Fewest exchanges in progress per weight; ties rotate so none is favoured."""
        cdef Py_ssize_t j, i, best
        cdef Py_ssize_t start = <Py_ssize_t>(self._next_random() % <uint64_t>k)
        best = self.candidates[start]
        for j in range(1, k):
            i = self.candidates[(start + j) % k]
            if self._less_loaded(i, best):
                best = i
        return best

    cdef Py_ssize_t _random_two(self, Py_ssize_t k):
        """Power of two choices: two at random, the less loaded one wins."""
        cdef Py_ssize_t a, b
        if k == 1:
            return self.candidates[0]
        a = <Py_ssize_t>(self._next_random() % <uint64_t>k)
        b = <Py_ssize_t>(self._next_random() % <uint64_t>(k - 1))
        if b >= a:
            b += 1
        a = self.candidates[a]
        b = self.candidates[b]
        return b if self._less_loaded(b, a) else a

    cdef Py_ssize_t _rendezvous(self, Py_ssize_t k, bytes client_ip):
        """Weighted rendezvous hashing on the client IP: a client keeps its upstream, and
        only the clients of an upstream that goes away move."""
        cdef const unsigned char* ip = client_ip
        cdef uint64_t h = _fnv1a(ip, len(client_ip), <uint64_t>0xcbf29ce484222325)
        cdef Py_ssize_t j, i, best = -1
        cdef double score, best_score = 0.0, unit
        for j in range(k):
            i = self.candidates[j]
            unit = ((_mix(h ^ self.seeds[i]) >> 11) + 0.5) * (1.0 / 9007199254740992.0)
            score = -self.weights[i] / log(unit)
            if best < 0 or score > best_score:
                best = i
                best_score = score
        return best

    cdef uint64_t _next_random(self) noexcept:
        self.rng ^= self.rng << 13
        self.rng ^= self.rng >> 7
        self.rng ^= self.rng << 17
        return self.rng

    cdef Upstream sticky(self, double now, const unsigned char* p, RequestHead* h):
        """The usable upstream that the request's affinity cookie names, if any."""
        cdef Py_ssize_t i, j, k
        cdef Field* f
        cdef bytes token
        for j in range(h.nfields):
            f = &h.fields[j]
            if f.kind != H_OTHER or not _ieq(p + f.line_start, f.name_len, b"cookie", 6):
                continue
            token = _cookie_value(p + f.value_start, f.value_len, self.cookie_name)
            if token is None:
                continue
            k = self._collect(now)
            for i in range(k):
                if self.tokens[self.candidates[i]] == token:
                    return self.upstreams[self.candidates[i]]
        return None

    cdef bytes set_cookie_field(self, Upstream up):
        """The response field that pins this client to ``up`` from now on."""
        cdef Py_ssize_t i = self.upstreams.index(up)
        return b"Set-Cookie: %s=%s; Path=/; HttpOnly; SameSite=Lax\r\n" % (
            self.cookie_name, self.tokens[i])


cdef bytes _cookie_value(const unsigned char* v, Py_ssize_t n, bytes name):
    """The value of cookie ``name`` in a Cookie field value (``a=1; b=2``), or None."""
    cdef Py_ssize_t pos = 0, s, eq, e
    cdef Py_ssize_t nlen = len(name)
    while pos < n:
        while pos < n and (v[pos] == 32 or v[pos] == 59):
            pos += 1
        s = pos
        while pos < n and v[pos] != 59:
            pos += 1
        e = pos
        eq = s
        while eq < e and v[eq] != 61:
            eq += 1
        if eq - s == nlen and eq < e and memcmp(v + s, <const char*>name, nlen) == 0:
            return v[eq + 1:e].rstrip()
    return None
