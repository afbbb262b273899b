"""
The shared session store: session state in Redis, so that several gateway
processes (workers, hosts) label one conversation with one session id.

Every store operation is one Lua script run (one round trip), so claims and
evictions are atomic across processes.  The layout, under ``key_prefix``:

- ``k:<key hex>``: the session that owns a state key (first claim wins);
- ``s:<session>:keys``: the session's state keys, oldest first (at most
  :data:`~llmgate.sessions.memory.KEYS_PER_SESSION` kept);
- ``s:<session>:latest``: the keys of its most recent state;
- ``sessions``: every session scored by last use, which gives the bound on
  sessions (pop the lowest) and expiry (remove scores below now - TTL)
  without scanning the keyspace;
- ``created``, ``expired``, ``evicted``, ``rate:<minute>``: counters that
  all gateways share.

A session is alive while its score in ``sessions`` is within the TTL; that
is the only test of liveness.  Per-session keys also carry Redis TTLs (twice
the session TTL, all refreshed by a call that finds less than 1.5 TTL left)
so that whatever a crashed gateway or a skipped clean-up leaves behind
disappears by itself; ``sessions`` and the counters have none (they are
bounded, and shared by every gateway).

Needs Redis 5 or later (ZPOPMIN), standalone or a primary: the scripts
compute key names, which Redis Cluster does not allow.  Gateways sharing a
prefix must agree on ``max_sessions`` and ``ttl`` and use the wall clock.

When Redis cannot be reached, every call is answered by an in-memory store
of this process instead, after at most ``timeout`` seconds: session labels
stay correct within one process and the gateway never stalls on its store.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Callable, Mapping, Sequence, TypeVar
from urllib.parse import unquote, urlsplit

import txredisapi
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from llmgate.interfaces import ISessionStore
from llmgate.sessions.memory import KEYS_PER_SESSION, MemorySessionStore, new_session_id

T = TypeVar("T")

#: Sessions whose keys one script deletes when they expire; the rest of the
#: expired sessions are only unregistered (their keys are inert and vanish
#: by their Redis TTL), so no single call does unbounded work.
EXPIRE_BATCH = 32

#: The one script behind every operation.  ARGV: op, prefix, now, cutoff
#: (now - ttl), key lifetime in ms, max sessions, keys per session, then
#: the operation's own arguments.  Scores and cutoff are sent as Python
#: ``repr`` strings so comparisons are exact doubles on both sides.
SCRIPT = """
local op = ARGV[1]
local P = ARGV[2]
local now = ARGV[3]
local cutoff = tonumber(ARGV[4])
local life = tonumber(ARGV[5])
local max_sessions = tonumber(ARGV[6])
local per_session = tonumber(ARGV[7])
-- ARGV[8]: the current minute (creation rate counter); op arguments follow,
-- state keys as hex joined by commas in one argument (encoding ~40
-- arguments costs the client more than the whole script costs Redis)
local Z = P .. 'sessions'

local function drop(sid)
  local lk = P .. 's:' .. sid .. ':keys'
  for _, h in ipairs(redis.call('LRANGE', lk, 0, -1)) do
    local k = P .. 'k:' .. h
    if redis.call('GET', k) == sid then redis.call('DEL', k) end
  end
  redis.call('DEL', lk, P .. 's:' .. sid .. ':latest')
end

local function expire()
  local old = redis.call('ZRANGEBYSCORE', Z, '-inf', ARGV[4], 'LIMIT', 0, %(batch)d)
  if #old == 0 then return end
  for _, sid in ipairs(old) do drop(sid) end
  local n = redis.call('ZREMRANGEBYSCORE', Z, '-inf', ARGV[4])
  redis.call('INCRBY', P .. 'expired', n)
end

local function alive(sid)
  local score = redis.call('ZSCORE', Z, sid)
  return score and tonumber(score) > cutoff
end

local function live(sid)
  if redis.call('ZSCORE', Z, sid) then
    redis.call('ZADD', Z, now, sid)
    -- keys outlive their session: refresh them all only when their shared
    -- lifetime (the list's) has less than 3/4 left
    local lk = P .. 's:' .. sid .. ':keys'
    local left = redis.call('PTTL', lk)
    if left ~= -2 and left < life * 3 / 4 then
      for _, h in ipairs(redis.call('LRANGE', lk, 0, -1)) do
        redis.call('PEXPIRE', P .. 'k:' .. h, life)
      end
      redis.call('PEXPIRE', lk, life)
      redis.call('PEXPIRE', P .. 's:' .. sid .. ':latest', life)
    end
    return
  end
  local count = redis.call('ZCARD', Z)
  while count > 0 and count >= max_sessions do
    local oldest = redis.call('ZPOPMIN', Z)
    drop(oldest[1])
    redis.call('INCR', P .. 'evicted')
    count = count - 1
  end
  redis.call('ZADD', Z, now, sid)
  redis.call('INCR', P .. 'created')
  local rate = P .. 'rate:' .. ARGV[8]
  redis.call('INCR', rate)
  redis.call('PEXPIRE', rate, 180000)
end

expire()

if op == 'find' then
  local i = 0
  for h in string.gmatch(ARGV[9], '[^,]+') do
    local k = P .. 'k:' .. h
    local owner = redis.call('GET', k)
    if owner then
      if alive(owner) then
        return {i, owner, redis.call('SISMEMBER', P .. 's:' .. owner .. ':latest', h)}
      end
      redis.call('DEL', k)
    end
    i = i + 1
  end
  return false
end

if op == 'live' then
  live(ARGV[9])
  return 1
end

if op == 'remember' then
  local sid = ARGV[9]
  live(sid)
  local lk = P .. 's:' .. sid .. ':keys'
  local latest = P .. 's:' .. sid .. ':latest'
  local owned = {}
  for h in string.gmatch(ARGV[11], '[^,]+') do
    local k = P .. 'k:' .. h
    local owner = redis.call('GET', k)
    if owner == sid then
      redis.call('PEXPIRE', k, life)
    elseif (not owner) or (not alive(owner)) then
      redis.call('SET', k, sid, 'PX', life)
      owner = sid
    end
    if owner == sid then
      owned[#owned + 1] = h
      redis.call('RPUSH', lk, h)
    end
  end
  if redis.call('PTTL', lk) == -1 then redis.call('PEXPIRE', lk, life) end
  if ARGV[10] == '1' then
    redis.call('DEL', latest)
    if #owned > 0 then
      redis.call('SADD', latest, unpack(owned))
      redis.call('PEXPIRE', latest, life)
    end
  end
  local n = redis.call('LLEN', lk)
  while n > per_session do
    local h = redis.call('LPOP', lk)
    local k = P .. 'k:' .. h
    if redis.call('GET', k) == sid and redis.call('SISMEMBER', latest, h) == 0 then
      redis.call('DEL', k)
    end
    n = n - 1
  end
  return #owned
end

if op == 'forget' then
  local sid = ARGV[9]
  for h in string.gmatch(ARGV[10], '[^,]+') do
    local k = P .. 'k:' .. h
    if redis.call('GET', k) == sid then redis.call('DEL', k) end
  end
  return 0
end

if op == 'stats' then
  return {
    redis.call('ZCARD', Z),
    redis.call('GET', P .. 'created') or '0',
    redis.call('GET', P .. 'expired') or '0',
    redis.call('GET', P .. 'evicted') or '0',
    redis.call('GET', P .. 'rate:' .. ARGV[8]) or '0',
    redis.call('GET', P .. 'rate:' .. ARGV[9]) or '0',
  }
end

return redis.error_reply('llmgate: unknown operation ' .. op)
""" % {"batch": EXPIRE_BATCH}


def parse_redis_url(url: str) -> dict[str, Any]:
    """
    ``redis://[[user]:password@]host[:port][/db]`` as txredisapi arguments.

    :raises ValueError: for another scheme or a bad database number.
    """
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ValueError(f"session store URL must start with redis://, not {parts.scheme or url!r}")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"session store URL database must be a number, not {path!r}")
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 6379,
        "dbid": int(path) if path else None,
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password is not None else None,
    }


@implementer(ISessionStore)
class RedisSessionStore:
    """
    Sessions shared through Redis, with the in-memory store's semantics
    (:class:`~llmgate.sessions.memory.MemorySessionStore`): first claim of a
    key wins, at most ``max_sessions`` sessions (least recently used
    evicted), a session expires ``ttl`` seconds after its last call, at most
    64 keys per session.

    Methods return a Deferred while Redis is used and a plain value while
    the fallback store is (the detector accepts both).  A call never fails
    and never waits more than ``timeout``: on any Redis error or timeout
    the call is answered by ``fallback`` and the store stays on the fallback
    until a probe (at most every ``probe_interval`` seconds, started by a
    call, never by a timer) finds Redis answering again.

    :param reactor: connects, runs timeouts and paces probes (real time).
    :param url: ``redis://[[user]:password@]host[:port][/db]``.
    :param key_prefix: prefix of every Redis key, so that several gateways
        (or tests) can share or separate one database.
    :param fallback: the store used while Redis is unreachable; by default
        an in-memory store with the same bounds.
    :param clock: time source for last-use scores; the reactor by default
        (tests pass a ``Clock``).  All gateways sharing a prefix must use
        comparable clocks (the wall clock).
    :param timeout: seconds a call may wait for Redis (connecting included).
    :param probe_interval: seconds between two attempts to get back to Redis.
    """

    log = Logger()

    #: Every worker reads what any worker writes.
    shared = True

    def __init__(
        self,
        reactor: IReactorTime,
        url: str,
        key_prefix: str = "llmgate:",
        max_sessions: int = 10_000,
        ttl: float = 3600.0,
        fallback: ISessionStore | None = None,
        *,
        clock: IReactorTime | None = None,
        timeout: float = 0.5,
        probe_interval: float = 3.0,
    ) -> None:
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self._connect_args = parse_redis_url(url)
        #: host:port, for logs (the URL may hold a password)
        self.address = f"{self._connect_args['host']}:{self._connect_args['port']}"
        self.key_prefix = key_prefix
        self.max_sessions = max_sessions
        self.ttl = ttl
        self.fallback = (
            fallback if fallback is not None else MemorySessionStore(self.clock, max_sessions, ttl)
        )
        self.timeout = timeout
        self.probe_interval = probe_interval
        #: Times the store switched to its fallback.
        self.fallbacks = 0
        #: Calls answered by the fallback store.
        self.fallback_calls = 0
        self._handler: Any = None
        self._factory: Any = None  # the handler's txredisapi.RedisFactory
        self._opening: Any = None  # the factory of the connection in progress
        self._connecting: Deferred[Any] | None = None
        self._waiting: list[Deferred[Any]] = []
        self._down = False
        self._probing = False
        self._next_probe = 0.0
        self._closed = False
        self._sha = hashlib.sha1(SCRIPT.encode()).hexdigest()
        # key lifetime in Redis, ms: twice the TTL (see the module docstring)
        self._life = max(1, math.ceil(2000 * ttl))
        self._snapshot: dict[str, Any] = {
            "active_sessions": 0,
            "sessions_created": 0,
            "sessions_expired": 0,
            "sessions_evicted": 0,
            "session_creation_rate_per_minute": 0,
        }
        self._snapshot_at: float | None = None
        self._fetching = False

    @property
    def fallback_active(self) -> bool:
        """
        True while calls are answered by the fallback store.
        """
        return self._down

    # -- ISessionStore ------------------------------------------------------------

    def find(self, keys: Sequence[bytes]) -> Deferred[tuple[int, str, bool] | None] | tuple[int, str, bool] | None:
        return self._run("find", [_joined(keys)], lambda: self.fallback.find(keys), _found)

    def remember(self, session_id: str, keys: Sequence[bytes], latest: bool = True) -> Deferred[None] | None:
        return self._run(
            "remember",
            [session_id, "1" if latest else "0", _joined(keys)],
            lambda: self.fallback.remember(session_id, keys, latest),
            _nothing,
        )

    def forget(self, session_id: str, keys: Sequence[bytes]) -> Deferred[None] | None:
        return self._run(
            "forget", [session_id, _joined(keys)], lambda: self.fallback.forget(session_id, keys), _nothing
        )

    def new_session(self) -> Deferred[str] | str:
        session_id = new_session_id()
        return self._run(
            "live", [session_id], self.fallback.new_session, lambda _: session_id
        )

    def touch(self, session_id: str) -> Deferred[None] | None:
        return self._run("live", [session_id], lambda: self.fallback.touch(session_id), _nothing)

    def stats(self) -> Mapping[str, Any]:
        """
        The figures for ``/metrics``, synchronously, although the interface
        would allow a Deferred: the gateway's metrics view is synchronous.
        So these are the last figures read from Redis (a background refresh
        starts when they are older than a second) plus this process's
        fallback state; :meth:`fetch_stats` waits for fresh ones.
        """
        now = self.reactor.seconds()
        if not self._fetching and (self._snapshot_at is None or now - self._snapshot_at >= 1.0):
            self._fetching = True
            self.fetch_stats().addBoth(self._fetched)
        return self._figures()

    # -- beyond the interface -------------------------------------------------------------

    def fetch_stats(self) -> Deferred[Mapping[str, Any]]:
        """
        Fresh figures from Redis (the last known ones while on the fallback).
        """
        now = self.clock.seconds()
        minute = math.floor(now / 60)
        fraction = now / 60 - minute

        def read(reply: Any) -> Mapping[str, Any]:
            zcard, created, expired, evicted, current, previous = (int(x) for x in reply)
            self._snapshot = {
                "active_sessions": zcard,
                "sessions_created": created,
                "sessions_expired": expired,
                "sessions_evicted": evicted,
                # a sliding minute, approximated from two per-minute counters
                "session_creation_rate_per_minute": round(current + previous * (1 - fraction)),
            }
            self._snapshot_at = self.reactor.seconds()
            return self._figures()

        if self._down:
            self._probe()
            return succeed(self._figures())
        done = self._run("stats", [str(minute - 1)], self._figures, read, minute=str(minute))
        return done if isinstance(done, Deferred) else succeed(done)

    def connect(self) -> Deferred[bool]:
        """
        Connect now rather than on the first call (at start-up, in tests).

        :return: a Deferred firing with whether Redis answers.
        """
        def failed(failure: Failure) -> bool:
            self._went_down(failure)
            return False

        return self._connection().addCallbacks(lambda _: True, failed)

    def close(self) -> Deferred[None]:
        """
        Drop the connection; later calls go to the fallback store.
        """
        self._closed = True
        self._down = True
        handler, self._handler, self._factory = self._handler, None, None
        if handler is None:
            return succeed(None)
        return _quietly(handler.disconnect())

    # -- internals --------------------------------------------------------------------

    def _figures(self) -> dict[str, Any]:
        figures = dict(self._snapshot)
        local = self.fallback.stats() if self.fallback_calls else {}
        figures.update(
            store="redis",
            fallback_active=self._down,
            fallbacks=self.fallbacks,
            fallback_calls=self.fallback_calls,
            # sessions only this process knows, made while Redis was away
            fallback_sessions=local.get("active_sessions", 0) if isinstance(local, Mapping) else 0,
        )
        return figures

    def _fetched(self, result: Any) -> None:
        self._fetching = False
        if isinstance(result, Failure):
            self.log.failure("reading session figures from Redis failed", result)

    def _run(
        self,
        op: str,
        args: list[str],
        fallback: Callable[[], T],
        convert: Callable[[Any], T],
        minute: str | None = None,
    ) -> Deferred[T] | T:
        """
        Run the script for ``op``, or answer with ``fallback()`` when Redis
        is down, fails, or takes longer than the timeout.
        """
        if self._down:
            self._probe()
            self.fallback_calls += 1
            return fallback()
        now = self.clock.seconds()
        argv = [
            op,
            self.key_prefix,
            repr(float(now)),
            repr(float(now - self.ttl)),
            str(self._life),
            str(self.max_sessions),
            str(KEYS_PER_SESSION),
            minute if minute is not None else str(math.floor(now / 60)),
            *args,
        ]
        result: Deferred[T] = Deferred()

        def give_up(reason: Any) -> None:
            if result.called:
                return
            if timer.active():
                timer.cancel()
            self._went_down(reason)
            if op != "stats":
                self.fallback_calls += 1
            try:
                value = fallback()
            except BaseException:
                result.errback()
            else:
                result.callback(value)

        def answered(reply: Any) -> None:
            if result.called:
                return
            timer.cancel()
            try:
                value = convert(reply)
            except BaseException:
                give_up(Failure())
            else:
                result.callback(value)

        timer = self.reactor.callLater(
            self.timeout, give_up, f"no answer within {self.timeout} s"
        )
        self._connection().addCallback(self._eval, argv).addCallbacks(answered, give_up)
        return result

    def _eval(self, handler: Any, argv: list[str]) -> Deferred[Any]:
        """
        EVALSHA, falling back to EVAL (which caches the script) on NOSCRIPT.
        """
        def missing(failure: Failure) -> Any:
            failure.trap(txredisapi.ScriptDoesNotExist)
            return handler.execute_command("EVAL", SCRIPT, 0, *argv)

        return handler.evalsha(self._sha, [], argv).addErrback(missing)

    def _connection(self) -> Deferred[Any]:
        """
        The connected handler; connects (once, shared by all waiters) if
        there is none.
        """
        if self._handler is not None:
            if self._factory is not None and self._factory.size:
                return succeed(self._handler)
            # lost while idle (a Redis restart, an idle timeout): connect
            # again now, within this call's timeout, rather than fall back
            self._drop()
        waiter: Deferred[Any] = Deferred()
        self._waiting.append(waiter)
        if self._connecting is None:
            self._connecting = self._open()
            self._connecting.addBoth(self._connected)
        return waiter

    def _open(self) -> Deferred[Any]:
        """
        A one-connection txredisapi factory that never reconnects by itself
        (no background timers: this class reconnects when a probe is due),
        on a plain TCP endpoint for an IP address so that a refused
        connection fails at once (a hostname goes through
        ``HostnameEndpoint``, which reports failures on its next attempt
        tick, 0.3 s later).
        """
        args = self._connect_args
        host, port = args["host"], args["port"]
        endpoint: Any
        if isIPAddress(host):
            endpoint = TCP4ClientEndpoint(self.reactor, host, port, timeout=self.timeout)
        elif isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(self.reactor, host, port, timeout=self.timeout)
        else:
            endpoint = HostnameEndpoint(self.reactor, host, port, timeout=self.timeout)
        factory = txredisapi.RedisFactory(
            self.address,
            args["dbid"],
            1,
            isLazy=False,
            password=args["password"],
            username=args["username"],
            convertNumbers=False,
        )
        factory.reconnect = False
        factory.startConnecting(endpoint)
        self._opening = factory
        return factory.deferred

    def _connected(self, result: Any) -> None:
        self._connecting = None
        waiting, self._waiting = self._waiting, []
        if not isinstance(result, Failure):
            if self._closed:
                _quietly(result.disconnect())
                result = Failure(txredisapi.ConnectionError("store closed"))
            else:
                self._handler, self._factory = result, self._opening
        self._opening = None
        for waiter in waiting:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def _drop(self) -> None:
        """
        Forget the connection and close it (quietly: it may be broken).
        """
        handler, self._handler, self._factory = self._handler, None, None
        if handler is not None:
            _quietly(handler.disconnect())

    def _went_down(self, reason: Any) -> None:
        """
        Switch to the fallback store (logged and counted once per outage)
        and drop the connection, which may be stuck.
        """
        self._drop()
        self._next_probe = self.reactor.seconds() + self.probe_interval
        if self._down:
            return
        self._down = True
        if self._closed:
            return
        self.fallbacks += 1
        self.log.warn(
            "Redis session store {address} unavailable ({reason}); "
            "sessions are kept in this process until it answers again",
            address=self.address,
            reason=_describe(reason),
        )

    def _probe(self) -> None:
        """
        Start a background connection and PING if one is due; the call
        that triggered it is answered by the fallback meanwhile.
        """
        if self._probing or self._closed or self.reactor.seconds() < self._next_probe:
            return
        self._probing = True
        result: Deferred[Any] = Deferred()

        def timed_out() -> None:
            if not result.called:
                result.errback(Failure(txredisapi.TimeoutError("probe timed out")))

        timer = self.reactor.callLater(self.timeout, timed_out)

        def pinged(reply: Any) -> None:
            if not result.called:
                result.callback(reply)

        def failed(failure: Failure) -> None:
            if not result.called:
                result.errback(failure)

        self._connection().addCallback(lambda handler: handler.ping()).addCallbacks(pinged, failed)
        result.addBoth(self._probed, timer)

    def _probed(self, result: Any, timer: Any) -> None:
        self._probing = False
        if timer.active():
            timer.cancel()
        if isinstance(result, Failure) or self._closed:
            self._drop()
            self._next_probe = self.reactor.seconds() + self.probe_interval
            return
        self._down = False
        self.log.info(
            "Redis session store {address} answers again; sessions are shared again",
            address=self.address,
        )


def _joined(keys: Sequence[bytes]) -> str:
    return ",".join([key.hex() for key in keys])


def _found(reply: Any) -> tuple[int, str, bool] | None:
    if not reply:
        return None
    index, session_id, latest = reply
    return int(index), str(session_id), bool(int(latest))


def _nothing(reply: Any) -> None:
    return None


def _describe(reason: Any) -> str:
    if isinstance(reason, Failure):
        name = reason.type.__name__ if reason.type is not None else "error"
        return f"{name}: {reason.getErrorMessage()}"
    return str(reason)


def _quietly(d: Deferred[Any]) -> Deferred[None]:
    """
    ``d`` with its failure, if any, swallowed: closing a broken connection
    may fail and nobody needs to hear it.
    """
    return d.addBoth(lambda _: None)
