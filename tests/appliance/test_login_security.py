"""Login against its attacks (appliance/auth/accounts.py login, docs/security.md A1-A6).

* A5: 40 concurrent wrong passwords against one account, from two auth processes (two
  SQLite connections on one file), check the password at most 5 times and lock the account.
* A3: an unknown user, a locked one, one who never signed up, a wrong password and a wrong
  password against a hash with older parameters get one answer after the same work (checked
  structurally: one check in the hasher's slot, scrypt work summing to the current cost; and by
  medians of real timings with a generous bound).
* A4: a hash with older parameters is replaced after the successful login has replied.
* A2: hashes run in the hasher's slots, never more at once; a login waiting for a slot has not
  used an attempt.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import AsyncIterator

import trio
import trio.testing

from _auth_helpers import CLUSTER, FAST_HASHER, PASSWORD, Env, FakeClock, ScryptPeak, make_env, new_key, signup
from appliance.auth import passwords, totp
from appliance.auth.passwords import PasswordHasher, Verdict
from appliance.auth.service import LOCK_SECONDS, MAX_FAILED_LOGINS, AuthService, AuthServiceError
from appliance.auth.timing import FailureDelay
from appliance.storage import SQLiteStorage

SAFETY = 30  # seconds: far above what any step takes (milliseconds at n=2**10)
WRONG = "wrong password!!"


async def attempt(service: AuthService, seed: str, clock: FakeClock, name: str = "alice",
                  password: str = PASSWORD) -> str:
    """One login; "ok" or the error's (code, message)."""
    try:
        await service.login(name, password, totp.code_at(seed, clock.now), new_key().public_key.blob,
                            None, "192.0.2.7")
    except AuthServiceError as exc:
        return f"{exc.code}: {exc.message}"
    return "ok"


class RaceHasher:
    """A real (cheap) hasher whose checks wait until ``expected`` attempts have reached one: all of
    them are then in flight at once, the race the lockout must win. Records what each checked."""

    def __init__(self, expected: int) -> None:
        self.inner = PasswordHasher(n=2**10, concurrency=expected)
        self.expected = expected
        self.checked: list[str | None] = []
        self.all_in = trio.Event()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[_RaceSlot]:
        async with self.inner.slot() as slot:
            yield _RaceSlot(self, slot)

    async def hash(self, password: str) -> str:
        return await self.inner.hash(password)


class _RaceSlot:
    def __init__(self, race: RaceHasher, slot: passwords.HashSlot) -> None:
        self.race, self.slot = race, slot

    async def check(self, password, encoded) -> Verdict:
        race = self.race
        race.checked.append(encoded)
        if len(race.checked) == race.expected:
            race.all_in.set()
        await race.all_in.wait()
        return await self.slot.check(password, encoded)


# ------------------------------------------------------------------ A5: the lockout race


async def test_forty_concurrent_wrong_passwords_from_two_processes_check_at_most_five_and_lock(tmp_path):
    clock = FakeClock()
    path = str(tmp_path / "jumpgate.db")
    first = await make_env(path, clock)
    seed = await signup(first)
    hasher = RaceHasher(expected=40)
    stores = [SQLiteStorage(path, clock=clock), SQLiteStorage(path, clock=clock)]
    services = [await AuthService.create(s, CLUSTER, clock=clock, hasher=hasher) for s in stores]
    stored_hash = (await stores[0].get_user("alice")).password_hash
    outcomes: list[str] = []

    async def one(service):
        outcomes.append(await attempt(service, seed, clock, password=WRONG))

    with trio.fail_after(SAFETY):
        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(one, services[i % 2])
    assert len(hasher.checked) == 40  # every attempt does the work of one check ...
    assert hasher.checked.count(stored_hash) == MAX_FAILED_LOGINS  # ... only 5 against the password
    assert len(set(outcomes)) == 1 and outcomes[0].startswith("access_denied")
    user = await stores[1].get_user("alice")
    assert user.locked_until == clock.now + LOCK_SECONDS
    events = await services[0].list_audit(limit=1000)
    assert len([e for e in events if e.event == "user.locked"]) == 1
    for storage in (*stores, first.storage):
        await storage.aclose()


async def test_a_login_waiting_for_a_hash_slot_has_not_used_an_attempt():
    """A5: the attempt is reserved in the slot; one cancelled in the queue checked nothing."""
    hasher = PasswordHasher(n=2**10, concurrency=1)
    clock = FakeClock()
    service = await AuthService.create(SQLiteStorage(":memory:", clock=clock), CLUSTER, clock=clock,
                                       hasher=hasher)
    env = Env(service, service.storage, clock)
    seed = await signup(env)
    release, queued = trio.Event(), trio.CancelScope()

    async def hold_every_slot(task_status=trio.TASK_STATUS_IGNORED):
        async with hasher.limiter:
            task_status.started()
            await release.wait()

    async def give_up_while_queued():
        with queued:
            await attempt(service, seed, clock, password=WRONG)

    with trio.fail_after(SAFETY):
        async with trio.open_nursery() as nursery:
            await nursery.start(hold_every_slot)
            nursery.start_soon(give_up_while_queued)
            await trio.testing.wait_all_tasks_blocked()  # the login waits for a slot
            queued.cancel()  # the client goes away
            release.set()
    assert queued.cancelled_caught
    assert (await service.storage.get_user("alice")).failed_logins == 0


# ---------------------------------------------------- A3: one answer, the same work


class Recorder:
    """The cheap hasher, recording every check and the scrypt work each one did."""

    def __init__(self, monkeypatch, hasher: PasswordHasher) -> None:
        self.hasher, self.checks, self._work = hasher, [], []
        real = passwords._scrypt

        def scrypt(*args):
            self._work.append(args[2] * args[3] * args[4])
            return real(*args)
        monkeypatch.setattr(passwords, "_scrypt", scrypt)

    @contextlib.asynccontextmanager
    async def slot(self):
        async with self.hasher.slot() as slot:
            yield _RecordingSlot(self, slot)

    async def hash(self, password: str) -> str:
        return await self.hasher.hash(password)


class _RecordingSlot:
    def __init__(self, recorder: Recorder, slot: passwords.HashSlot) -> None:
        self.recorder, self.slot = recorder, slot

    async def check(self, password, encoded) -> Verdict:
        recorder = self.recorder
        recorder._work.clear()
        verdict = await self.slot.check(password, encoded)
        recorder.checks.append((encoded, sum(recorder._work), recorder.hasher.limiter.borrowed_tokens))
        return verdict


async def refused_users(env: Env, seed: str) -> dict[str, tuple[str, str]]:
    """Make one user of each kind; return name -> (password to try, seed)."""
    for name in ("locked", "wrongpw", "oldhash"):
        await signup(env, name, logins=(name,))
    await env.service.create_user("invited", ["invited"])
    user = await env.storage.get_user("oldhash")
    await env.storage.update_password_hash("oldhash", user.password_hash,
                                           PasswordHasher(n=2**10).hash_sync(PASSWORD))
    for _ in range(MAX_FAILED_LOGINS):
        await attempt(env.service, seed, env.clock, "locked", WRONG)
    return {"nobody": PASSWORD, "locked": PASSWORD, "invited": PASSWORD, "wrongpw": WRONG,
            "oldhash": WRONG, "Not A Name!": PASSWORD}


async def test_unknown_locked_unsigned_and_wrong_password_users_get_one_answer_after_the_same_work(monkeypatch):
    current = PasswordHasher(n=2**12)
    recorder = Recorder(monkeypatch, current)
    delay_names = []

    class Delay(FailureDelay):
        async def pad(self, started, name):
            delay_names.append(name)
            await super().pad(started, name)

    clock = FakeClock()
    service = await AuthService.create(SQLiteStorage(":memory:", clock=clock), CLUSTER, clock=clock,
                                       hasher=recorder, failure_delay=Delay())
    env = Env(service, service.storage, clock)
    seed = await signup(env)
    tries = await refused_users(env, seed)
    stored = {u.name: u.password_hash for u in await env.storage.list_users()}
    recorder.checks.clear()
    delay_names.clear()
    answers = {name: await attempt(service, seed, clock, name, password) for name, password in tries.items()}
    assert len(set(answers.values())) == 1, answers  # one code, one message for every case
    assert next(iter(answers.values())).startswith("access_denied: ")
    assert len(recorder.checks) == len(tries)  # one check each ...
    for (encoded, work, slots), name in zip(recorder.checks, tries):
        assert work == current.n * current.r * current.p, name  # ... at the current cost ...
        assert slots == 1, name                                 # ... in the hasher's slot
        assert encoded == (stored[name] if name in ("wrongpw", "oldhash") else None), name
    assert delay_names == list(tries)  # and every refusal is padded to its name's delay


async def test_refusal_timing_does_not_depend_on_the_account():
    """A3, measured: medians of the CPU each refusal costs, at a hash cost where a skipped hash
    would show (n=2**13: tens of ms, against about 1 ms without it). CPU time (the process's,
    worker threads included) rather than wall time: other jobs on a shared machine stretch the
    wall clock, not our CPU, so a 2x bound stays meaningful and quiet; a path without the hash
    would be 10x off. (An attacker measures wall time, which the padding of A6 also evens.)"""
    clock = FakeClock()
    hasher = PasswordHasher(n=2**13)
    service = await AuthService.create(SQLiteStorage(":memory:", clock=clock), CLUSTER, clock=clock,
                                       hasher=hasher, failure_delay=FailureDelay(base=0))
    env = Env(service, service.storage, clock)
    seed = await signup(env)
    runs = 7
    for i in range(runs):
        for kind in ("wrong", "old"):
            await signup(env, f"{kind}{i}", logins=("x",))
    for i in range(runs):
        user = await env.storage.get_user(f"old{i}")
        await env.storage.update_password_hash(f"old{i}", user.password_hash,
                                               PasswordHasher(n=2**10).hash_sync(PASSWORD))
    for _ in range(MAX_FAILED_LOGINS):
        await attempt(service, seed, clock, "alice", WRONG)  # alice is now locked
    timings: dict[str, list[float]] = {"unknown": [], "locked": [], "wrong": [], "old": []}
    for i in range(runs):  # interleaved, so that a slow moment of the machine hits every kind
        for kind, name in (("unknown", f"ghost{i}"), ("locked", "alice"), ("wrong", f"wrong{i}"),
                           ("old", f"old{i}")):
            started = time.process_time()
            assert (await attempt(service, seed, clock, name, WRONG)).startswith("access_denied")
            timings[kind].append(time.process_time() - started)
    medians = {kind: statistics.median(values) for kind, values in timings.items()}
    assert max(medians.values()) < 2 * min(medians.values()), medians


def test_the_failure_delay_is_a_function_of_the_name_and_at_least_the_time_taken():
    delay = FailureDelay(key=b"k" * 32)
    for elapsed in (0.0, 0.003, 0.4, 1.7):
        for name in ("alice", "nobody", "x" * 64):
            target = delay.target(name, elapsed)
            assert target >= elapsed and target == delay.target(name, elapsed)
            assert target <= max(2 * elapsed, 0.0092)
    assert FailureDelay(key=b"a" * 32).target("alice", 0) != FailureDelay(key=b"b" * 32).target("alice", 0)


async def test_a_refusal_is_answered_no_sooner_than_its_delay():
    clock = FakeClock()
    service = await AuthService.create(SQLiteStorage(":memory:", clock=clock), CLUSTER, clock=clock,
                                       hasher=FAST_HASHER, failure_delay=FailureDelay(base=0.05, spread=0))
    started = trio.current_time()
    await attempt(service, "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP", clock, "nobody")
    assert trio.current_time() - started >= 0.05


# --------------------------------------------------------- A4: rehash after the reply


class GatedHash:
    """The cheap hasher at n=2**11, whose hash() waits for ``release`` (checks run at once)."""

    def __init__(self) -> None:
        self.inner = PasswordHasher(n=2**11)
        self.release = trio.Event()
        self.hashing = trio.Event()

    def slot(self):
        return self.inner.slot()

    async def hash(self, password: str) -> str:
        self.hashing.set()
        await self.release.wait()
        return await self.inner.hash(password)


async def old_hash_env(hasher) -> tuple[Env, str, str, list[bool], trio.Event]:
    """A service with alice's hash at older parameters; what each rehash's compare-and-set
    returned is appended to the list, and the event is set after the first."""
    clock = FakeClock()
    service = await AuthService.create(SQLiteStorage(":memory:", clock=clock), CLUSTER, clock=clock,
                                       hasher=hasher)
    env = Env(service, service.storage, clock)
    hasher.release.set()
    seed = await signup(env)
    hasher.release = trio.Event()
    old = PasswordHasher(n=2**10).hash_sync(PASSWORD)
    user = await env.storage.get_user("alice")
    await env.storage.update_password_hash("alice", user.password_hash, old)
    updates, updated = [], trio.Event()
    real = env.storage.update_password_hash

    async def update_password_hash(*args):
        updates.append(await real(*args))
        updated.set()
        return updates[-1]
    env.storage.update_password_hash = update_password_hash
    return env, seed, old, updates, updated


async def test_a_hash_with_older_parameters_is_replaced_after_the_login_replied(nursery):
    hasher = GatedHash()
    env, seed, old, updates, updated = await old_hash_env(hasher)
    await nursery.start(env.service.run)
    with trio.fail_after(SAFETY):
        assert await attempt(env.service, seed, env.clock) == "ok"  # replied while the rehash waits
        await hasher.hashing.wait()
        assert (await env.storage.get_user("alice")).password_hash == old
        hasher.release.set()
        await updated.wait()
    assert updates == [True]
    assert (await env.storage.get_user("alice")).password_hash.startswith("scrypt$2048$8$1$")
    env.clock.next_step()
    assert await attempt(env.service, seed, env.clock) == "ok"  # the new hash verifies ...
    assert updates == [True]  # ... and needs no rehash


async def test_a_rehash_never_undoes_a_reset_made_meanwhile(nursery):
    hasher = GatedHash()
    env, seed, _, updates, updated = await old_hash_env(hasher)
    await nursery.start(env.service.run)
    with trio.fail_after(SAFETY):
        assert await attempt(env.service, seed, env.clock) == "ok"
        await hasher.hashing.wait()
        await env.service.reset_user("alice")
        hasher.release.set()
        await updated.wait()
    assert updates == [False] and (await env.storage.get_user("alice")).password_hash is None


# ----------------------------------------------------------------- A2: the hash slots


async def test_concurrent_logins_hash_in_the_hashers_slots_never_more_at_once(monkeypatch):
    hasher = PasswordHasher(n=2**10, concurrency=2)
    spy = ScryptPeak(monkeypatch, passwords)  # two run together (the slots allow it), no third
    clock = FakeClock()
    service = await AuthService.create(SQLiteStorage(":memory:", clock=clock), CLUSTER, clock=clock,
                                       hasher=hasher, failure_delay=FailureDelay(base=0))
    async with trio.open_nursery() as nursery:
        for i in range(12):
            nursery.start_soon(attempt, service, "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP", clock, f"user{i}")
    assert spy.peak == 2


def test_the_service_hashes_with_the_production_hasher_by_default():
    assert AuthService.create.__kwdefaults__["hasher"] is passwords.DEFAULT_HASHER
