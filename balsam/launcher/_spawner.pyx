# cython: language_level=3
"""Cython kernel of :mod:`balsam.launcher.spawn_native`: a worker rank's task starts from native
threads that never take the GIL.

A :class:`Spawner` owns up to ``max_threads`` POSIX threads. Each takes start requests from its
own queue (a mutex and a condition variable), pins itself to the request's CPU set (the child
inherits it), makes the working directory unless it was prepared, calls ``posix_spawn`` (file
actions: stdin ``/dev/null``, stdout and stderr to the output file, then ``chdir``: those of
:mod:`balsam.launcher.libc_spawn`; attributes: a new session, SIGPIPE and SIGXFSZ at their
default, as there, and every other signal not ignored when the :class:`Spawner` was made: the
child's dispositions after its ``exec`` are the same, for half of glibc's ~120 ``rt_sigaction``
calls per child, see ``bs_not_ignored``), opens the child's pidfd, notes the start in a list the loop drains
(:meth:`Spawner.collect`) and only then adds the pidfd to the loop's ``epoll``: the loop wakes
when the task ends, not when it starts. A start that yields no pidfd (it failed, or pidfds are
missing) also writes the event fd, so that the loop wakes to learn of it.

A *chained* start (``submit(..., after=pidfd)``, or ``after_token``: after a start asked for
earlier and not collected yet, whose pidfd the thread passes on) waits in its thread until the
task it follows has exited: the thread polls a dup of that task's pidfd (with its own event fd, which a
new request or a cancel writes) and never reaps it, so the task stays a zombie until the loop
reaps it (its pid is never reused while the loop may still signal it); then it starts the
follow-on at once, without waiting for Python, and writes the event fd so the loop learns of
the start (and can chain the next one behind it). :meth:`Spawner.cancel` withdraws a chained
start that has not begun. Every start comes back with its real wall-clock start time. A
chained start whose predecessor cannot be watched (it started without a pidfd: ``pidfd_open``
failed, or no dup of it could be made) is never made: it comes back *returned* (errno
``RETURNED``), and so do the starts chained behind it, for the loop to start once that task is
reaped. The thread opens the task's output file itself, ``O_NONBLOCK`` (then cleared): a FIFO
at its path fails the start (ENXIO) instead of blocking the thread and :meth:`Spawner.close`.
A chained start's note to the task watchdog (``?JOBID``) is written without blocking, retried
for at most a second while the pipe is full (a watchdog alive but stuck): then the start comes
back *returned* too (errno ``UNNOTED``), never made unannounced. :meth:`Spawner.close` waits
for the threads a bounded time: one stuck in a system call (a ``mkdir`` on a hung file system)
is left, makes no start once it returns, and ends with the process. A start whose
``posix_spawn`` has not begun when the stop comes is dropped (its note, if written, undone:
``^JOBID``); one whose ``posix_spawn`` the stop overtook is killed at once (nobody would reap,
report or stop it). :meth:`Spawner.withdraw` (a kill or stop of a job whose start is in
flight) drops a start whose ``posix_spawn`` has not begun (``WITHDRAWN``). The task's
directory is looked up by the thread (opened, then ``fchdir`` in the child): a hung file
system holds the thread before ``posix_spawn``, where a stop or withdrawal is seen, never the
``vfork`` child, which would run the task once it answered.

What the pure-Python path (:mod:`balsam.launcher.spawn_threads`) does in Python, this does in
C; what stays in Python (program look-up on PATH, argument and environment checks, error
messages) is done by the caller before :meth:`Spawner.submit` or after :meth:`collect`.
"""
import os
import signal

from libc.stdlib cimport free, malloc
from libc.string cimport strdup

cdef extern from "_spawner.h":
    ctypedef struct bs_req:
        long token
        char *program
        char *cwd
        char *out
        char *note
        char **argv
        char **envp
        char **owned
        int nowned
        int prepared
        int pin
        int after
        long after_token
        int keep

    ctypedef struct bs_done:
        long token
        int pid
        int fd
        int err
        double when

    ctypedef struct bs_spawner:
        int evfd
        int nthreads
        int maxthreads
        int watch_fd
        int no_pidfd_every
        int hang_fd
        char *hang_dir
        int stopping
        unsigned long unnoted
        int note_wait_ms

    bs_spawner *bs_new(int epfd, int maxthreads)
    int bs_submit(bs_spawner *sp, int which, bs_req *r)
    int bs_cancel(bs_spawner *sp, int which, long token)
    int bs_withdraw(bs_spawner *sp, int which, long token)
    int bs_stop(bs_spawner *sp, double seconds) nogil
    int bs_late(bs_spawner *sp, long *out)
    void bs_free(bs_spawner *sp)
    size_t bs_collect(bs_spawner *sp, bs_done *out, size_t cap)
    void bs_free_req(bs_req *r)
    void bs_cpu_zero(bs_req *r)
    void bs_cpu_set(bs_req *r, int cpu)

cdef enum:
    _BATCH = 256

RETURNED = -1
"""A start's errno in :meth:`Spawner.collect` when it was handed back unstarted (``BS_RETURNED``:
the task it follows cannot be watched)."""
UNNOTED = -2
"""... handed back unstarted because its note could not be written to the watch fd within a
second (``BS_UNNOTED``: the task watchdog lives but reads nothing; counted in
:attr:`Spawner.unnoted`)."""
WITHDRAWN = -4
"""... handed back unstarted because :meth:`Spawner.withdraw` came before its ``posix_spawn``
(``BS_WITHDRAWN``: a kill or stop of its job)."""
STOP_SECONDS = 5.0
"""How long :meth:`Spawner.close` waits for the threads by default."""


cdef char *_dup(bytes value) except NULL:
    cdef char *copy = strdup(value)
    if copy == NULL:
        raise MemoryError()
    return copy


cdef class Spawner:
    """Native spawning threads for one worker (see the module docstring). ``environ``: the base
    environment as ``NAME=value`` byte strings; ``epfd``: the loop's epoll (each started task's
    pidfd is added, EPOLLIN); at most ``max_threads`` threads."""

    cdef bs_spawner *sp
    cdef char **base
    cdef int nbase
    cdef readonly int max_threads
    cdef readonly int stuck  # threads close() left running (stuck in a system call)
    cdef readonly list late
    """After :meth:`close`: the starts (tokens) begun but never collected (made, or left
    in ``posix_spawn``: they may have run); any other start not collected was never made."""

    def __cinit__(self, list environ, int epfd, int max_threads):
        cdef int i
        self.late = []
        self.sp = bs_new(epfd, max_threads)
        if self.sp == NULL:
            raise MemoryError("no room for the spawning threads or their event fd")
        self.max_threads = max_threads
        self.nbase = len(environ)
        self.base = <char **>malloc((self.nbase + 1) * sizeof(char *))
        if self.base == NULL:
            raise MemoryError()
        for i in range(self.nbase):
            self.base[i] = NULL
        for i in range(self.nbase):
            self.base[i] = _dup(environ[i])
        self.base[self.nbase] = NULL

    @property
    def eventfd(self) -> int:
        """Readable while a start that yields no pidfd is waiting to be collected."""
        return self.sp.evfd

    @property
    def threads(self) -> int:
        """Threads made so far."""
        return self.sp.nthreads

    @property
    def unnoted(self) -> int:
        """Chained starts handed back so far because their note could not be written
        (:data:`UNNOTED`)."""
        return 0 if self.sp == NULL else self.sp.unnoted

    @property
    def stopping(self) -> bool:
        """Tests: whether :meth:`close` began (seen from another thread while it waits)."""
        return self.sp == NULL or self.sp.stopping != 0

    def submit(self, long token, bytes program, list argv, list extra, bytes cwd, bytes out,
               bint prepared, tuple cpus, int which, int after=-1, long after_token=0,
               bint keep=False, bytes note=b""):
        """Queue a start on thread ``which`` (< ``max_threads``): ``argv`` byte strings,
        ``extra`` (base slot or -1, ``NAME=value``) pairs for the task's own variables,
        ``cpus`` to pin it to (empty: not pinned). The caller checked them all (no NUL).
        ``after`` >= 0: a chained start, made once that pidfd (the running task it follows)
        is readable; the request owns it from this call on (closed also if this raises).
        ``after_token`` > 0 (with ``after`` -1): a chained start after the start of that token,
        asked for earlier on the same thread and not collected yet (made at once if that one
        failed). ``keep``: a start may be asked for after this one (its record keeps a dup of
        the child's pidfd until :meth:`collect`). ``note``: a line written to the watch fd
        (:meth:`watch`) just before the start (not if making its directory failed)."""
        cdef bs_req *r
        cdef int i, slot, end, nargv = len(argv), nextra = len(extra)
        if self.sp == NULL:
            if after >= 0:
                os.close(after)
            raise ValueError("the spawner is closed")
        if not 0 <= which < self.max_threads:
            if after >= 0:
                os.close(after)
            raise ValueError(f"no spawning thread {which}")
        r = <bs_req *>malloc(sizeof(bs_req))
        if r == NULL:
            if after >= 0:
                os.close(after)
            raise MemoryError()
        r.after = after
        r.after_token = after_token
        r.keep = keep
        r.nowned = 0
        r.program = r.cwd = r.out = r.note = NULL
        r.argv = <char **>malloc((nargv + 1) * sizeof(char *))
        r.envp = <char **>malloc((self.nbase + nextra + 1) * sizeof(char *))
        r.owned = <char **>malloc((nargv + nextra + 1) * sizeof(char *))
        try:
            if r.argv == NULL or r.envp == NULL or r.owned == NULL:
                raise MemoryError()
            r.token, r.prepared, r.pin = token, prepared, len(cpus) > 0
            r.program, r.cwd, r.out = _dup(program), _dup(cwd), _dup(out)
            if note:
                r.note = _dup(note)
            for i in range(nargv):
                r.argv[i] = r.owned[r.nowned] = _dup(argv[i])
                r.nowned += 1
            r.argv[nargv] = NULL
            for i in range(self.nbase):
                r.envp[i] = self.base[i]
            end = self.nbase
            for slot, entry in extra:
                r.owned[r.nowned] = _dup(entry)
                if 0 <= slot < self.nbase:
                    r.envp[slot] = r.owned[r.nowned]
                else:
                    r.envp[end] = r.owned[r.nowned]
                    end += 1
                r.nowned += 1
            r.envp[end] = NULL
            bs_cpu_zero(r)
            for i in cpus:
                bs_cpu_set(r, i)
            err = bs_submit(self.sp, which, r)
            if err:
                raise OSError(err, "cannot queue the start")
        except BaseException:
            bs_free_req(r)
            raise

    def watch(self, int fd) -> None:
        """Write the starts' notes to ``fd`` (the spawner owns it from now, closed by
        :meth:`close`, or pointed at ``/dev/null`` if a thread is left stuck): the task
        watchdog's pipe, a dup of the loop's non-blocking end or opened anew (made
        non-blocking here, so that a thread waits at most a second for a full pipe)."""
        if self.sp == NULL:
            os.close(fd)
            raise ValueError("the spawner is closed")
        os.set_blocking(fd, False)
        if self.sp.watch_fd >= 0:
            os.close(self.sp.watch_fd)
        self.sp.watch_fd = fd

    def note_wait(self, double seconds) -> None:
        """How long a start's note waits for room in a full pipe before the start is handed
        back (:data:`UNNOTED`; default one second: the task watchdog reads every 20 ms)."""
        if self.sp != NULL:
            self.sp.note_wait_ms = max(0, <int>(seconds * 1000))

    def hang_mkdirs(self, int fd) -> None:
        """Tests: a start that makes its directory (first, or again: made ahead, removed
        since) first reads one byte from ``fd`` (not owned), blocking as a ``mkdir`` on a hung
        file system would; -1: none."""
        if self.sp != NULL:
            self.sp.hang_fd = fd

    def hang_dirs(self, bytes fifo) -> None:
        """Tests: a start's lookup of its task's directory first opens ``fifo`` (a FIFO) for
        reading, blocking until the test opens it for writing, as a lookup on a hung file
        system would (b"": none)."""
        if self.sp != NULL:
            free(self.sp.hang_dir)
            self.sp.hang_dir = _dup(fifo) if fifo else NULL

    def withdraw(self, int which, long token) -> bool:
        """Withdraw start ``token`` on thread ``which`` (its job was killed or stopped): if its
        ``posix_spawn`` has not begun it is never made and comes back :data:`WITHDRAWN`; True
        if it was found in flight (False: it is done, or unknown)."""
        if self.sp == NULL or not 0 <= which < self.max_threads:
            return False
        return bs_withdraw(self.sp, which, token) == 1

    def fail_pidfds(self, int every) -> None:
        """Tests: the pidfd of every ``every``-th child started from now on is closed at once,
        as if ``pidfd_open`` had failed (EMFILE, or ENOSYS in a container); 0: none."""
        if self.sp != NULL:
            self.sp.no_pidfd_every = every

    def cancel(self, int which, long token) -> bool:
        """Cancel the chained start ``token`` queued on thread ``which``: True if it had not
        begun (it never will), False if it has (it comes back through :meth:`collect`)."""
        if self.sp == NULL or not 0 <= which < self.max_threads:
            return False
        return bs_cancel(self.sp, which, token) == 1

    def collect(self, size_t most=0) -> list:
        """The starts done since the last call: (token, pid, pidfd or -1, errno or 0, the
        wall-clock time of the start); errno :data:`RETURNED`: handed back, never started.
        ``most`` > 0: the first ``most`` only (tests: the others stay noted for the next)."""
        cdef bs_done out[_BATCH]
        cdef size_t n, i, cap
        found = []
        while self.sp != NULL:
            cap = _BATCH if most == 0 or most - len(found) > _BATCH else most - len(found)
            n = bs_collect(self.sp, out, cap)
            for i in range(n):
                found.append((out[i].token, out[i].pid, out[i].fd, out[i].err, out[i].when))
            if n < cap or len(found) == most:
                break
        return found

    def close(self, double timeout=STOP_SECONDS) -> int:
        """Stop the threads (a start not made yet is dropped, queued ones too; one made as the
        stop came is killed: see the module docstring), waiting at most ``timeout`` seconds
        for them; pidfds of starts not collected are closed. Returns how many threads were
        left running (:attr:`stuck`: a mkdir on a hung file system; each ends when its system
        call returns, starting nothing, or with the process)."""
        if self.sp != NULL:
            with nogil:
                self.stuck = bs_stop(self.sp, timeout)
            self.late = self._leftovers()
            if self.stuck == 0:
                bs_free(self.sp)
            self.sp = NULL  # (with threads left, never freed: they may still touch it)
        return self.stuck

    cdef list _leftovers(self):
        """After ``bs_stop``: the tokens of starts begun and never collected (their pidfds,
        if any, closed now). A task made and never collected (made after the loop's last
        wait for starts: its thread held by a hung file system) is killed, as one the stop
        overtook is: nothing would reap, report or stop it."""
        cdef long *found = <long *>malloc(self.max_threads * sizeof(long))
        cdef int n = 0
        if found != NULL:
            n = bs_late(self.sp, found)
        late = [found[i] for i in range(n)]
        free(found)
        for token, pid, fd, err, _ in self.collect():
            if err == 0:
                late.append(token)
                try:
                    os.killpg(pid, signal.SIGKILL)  # (our child, unreaped: its group's id)
                except ProcessLookupError:  # (not while it is unreaped)
                    pass
            if fd >= 0:
                os.close(fd)
        return late

    def __dealloc__(self):
        cdef int i
        cdef double seconds = STOP_SECONDS
        if self.sp != NULL:
            with nogil:
                self.stuck = bs_stop(self.sp, seconds)
            if self.stuck == 0:
                bs_free(self.sp)
            self.sp = NULL
        if self.base != NULL and self.stuck == 0:  # (a stuck thread's request points here)
            for i in range(self.nbase):
                free(self.base[i])
            free(self.base)
            self.base = NULL
