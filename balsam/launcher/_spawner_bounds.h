/* What bounds a native spawning thread's waits, the part of balsam/launcher/_spawner.h that
   keeps a worker rank from hanging on a stuck neighbour (see _spawner.pyx's docstring): a
   chained start's note to a task watchdog that reads nothing (bs_note), and a stop that waits
   for a thread stuck in a system call (bs_stop). Included by _spawner.h only, after its types
   and helpers. */
#ifndef BALSAM_SPAWNER_BOUNDS_H
#define BALSAM_SPAWNER_BOUNDS_H

/* Write a start's note to the watchdog's pipe: one write of one short line (atomic in the
   pipe: the loop writes whole lines of at most PIPE_BUF bytes, pipe_lines.py), retried while
   the pipe is full for at most sp->note_wait_ms (BS_NOTE_WAIT_MS; the watchdog reads every
   20 ms: a full pipe
   that long means it is stuck). 0: written, or the watchdog is gone (EPIPE: nothing covers
   the tasks any more, the loop's writes fail too, and the start is made as before);
   BS_UNNOTED: not written in time (the caller counts it in sp->unnoted). */
static int bs_note(bs_spawner *sp, const char *note) {
    size_t len = strlen(note);
    struct timespec at, now;
    clock_gettime(CLOCK_MONOTONIC, &at);
    for (;;) {
        struct pollfd p;
        long left;
        if (write(sp->watch_fd, note, len) >= 0 || (errno != EAGAIN && errno != EINTR))
            return 0;
        clock_gettime(CLOCK_MONOTONIC, &now);
        left = sp->note_wait_ms - (now.tv_sec - at.tv_sec) * 1000
               - (now.tv_nsec - at.tv_nsec) / 1000000;
        if (left <= 0) return BS_UNNOTED;
        p.fd = sp->watch_fd; p.events = POLLOUT; p.revents = 0;
        if (poll(&p, 1, (int)left) < 0 && errno != EINTR) return 0;
    }
}

/* A start whose note (?JOBID) went in was dropped after all (a stop began: bs_start): tell
   the watchdog (^JOBID: expected once less), or at its end it would count a start that never
   happened (a lost run recorded: ensemble_watch). The same bounded write; best effort. */
static void bs_unnote(bs_spawner *sp, char *note) {
    note[0] = '^';
    if (bs_note(sp, note) != 0) {}
}

/* Whether start r is not to be made: a stop began (bs_stop), or it was withdrawn. */
static int bs_dropped(bs_spawner *sp, bs_req *r) {
    return bs_stopping(sp) || __atomic_load_n(&r->dropped, __ATOMIC_ACQUIRE);
}

/* tests (Spawner.hang_dirs): a lookup of a task's directory first opens a FIFO for reading,
   which blocks until the test opens it for writing, as a lookup on a hung file system would */
static void bs_hang_dir(bs_spawner *sp) {
    int fd;
    if (sp->hang_dir != NULL && (fd = open(sp->hang_dir, O_RDONLY | O_CLOEXEC)) >= 0) close(fd);
}

/* The task's directory is looked up here, in this thread, not by the child's chdir: opened
   (O_PATH) and checked for search permission, then the child only fchdir()s to the open
   descriptor. A directory on a hung file system (NFS) then hangs this thread before
   posix_spawn, where a stop or a withdrawal is seen once it returns (the start is dropped),
   never the vfork child, which would exec the task once the file system answered -- after the
   loop gave up on it, or after the rank exited (the child outlives it: a task nobody watches).
   The output file is opened here too, O_NONBLOCK: a FIFO (or a device) at its path must never
   block this thread in open(), nor the worker's close, which joins it. A FIFO without a reader
   fails ENXIO (the task fails: libc_spawn.failure names the file); any other opens at once,
   and the flag is cleared before the task gets it (libc_spawn does the same). A stop or a
   withdrawal that came before the spawn drops the start (BS_DROPPED). */
static int bs_posix_spawn(bs_spawner *sp, bs_req *r, pid_t *pid) {
    posix_spawn_file_actions_t fa;
    int err, out, dir;
    if (bs_dropped(sp, r)) return BS_DROPPED;  /* (and after each open: one may hang) */
    bs_hang_dir(sp);
    dir = open(r->cwd, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) return errno;
    if (faccessat(dir, ".", X_OK, AT_EACCESS) != 0) { err = errno; close(dir); return err; }
    if (bs_dropped(sp, r)) { close(dir); return BS_DROPPED; }
    out = open(r->out, O_WRONLY | O_CREAT | O_TRUNC | O_NONBLOCK | O_CLOEXEC, 0666);
    if (out < 0) { err = errno; close(dir); return err; }
    err = fcntl(out, F_SETFL, 0) < 0 ? errno : 0;
    if (!err && posix_spawn_file_actions_init(&fa)) err = ENOMEM;
    if (err) { close(out); close(dir); return err; }
    /* the fchdir first (dir may be 0, 1 or 2 if this process lacks them), then stdout: out
       may be 0 (this process has no stdin), which /dev/null replaces */
    if (posix_spawn_file_actions_addfchdir_np(&fa, dir)
            || posix_spawn_file_actions_adddup2(&fa, out, 1)
            || posix_spawn_file_actions_adddup2(&fa, 1, 2)
            || posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0))
        err = ENOMEM;
    else {  /* begun, then the last look (a fence between: bs_stop sees one or the other) */
        __atomic_store_n(&r->begun, 1, __ATOMIC_RELEASE);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        err = bs_dropped(sp, r) ? BS_DROPPED
              : posix_spawn(pid, r->program, &fa, &sp->attr, r->argv, r->envp);
    }
    posix_spawn_file_actions_destroy(&fa);
    close(out);
    close(dir);
    return err;
}

/* Withdraw start `token` on thread `which` (a kill or stop of its job while it is in flight):
   queued, or being made with its posix_spawn not begun, it is not made and comes back
   BS_WITHDRAWN (a chained one waiting for its predecessor once that one ends: bs_cancel
   withdraws those at once); 1 if found, 0 if it is done already. Its posix_spawn begun, the
   task is made and comes back with the loop's mark, to be ended. */
static int bs_withdraw(bs_spawner *sp, int which, long token) {
    bs_thread *t = &sp->threads[which];
    bs_req *r, *it = NULL;
    if (!t->started) return 0;
    pthread_mutex_lock(&t->mu);
    if (t->current != NULL && t->current->token == token) it = t->current;
    for (r = t->head; r != NULL && it == NULL; r = r->next) if (r->token == token) it = r;
    for (r = t->waiting; r != NULL && it == NULL; r = r->next) if (r->token == token) it = r;
    if (it != NULL) __atomic_store_n(&it->dropped, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&t->mu);
    return it != NULL;
}

/* Thread t was left running by bs_stop: a start it has begun to make (posix_spawn called: a
   child stuck in its exec) may still run, and is noted late (bs_late); one it has not begun
   never will be. Its later writes of notes go to /dev/null: the watch fd, a writer of the
   watchdog's pipe, must not keep it open (the watchdog would never read end of file while
   this process lives, and the owner's close would wait for it in vain). */
static void bs_stuck(bs_spawner *sp, bs_thread *t) {
    int null;
    pthread_mutex_lock(&t->mu);
    if (t->current != NULL && __atomic_load_n(&t->current->begun, __ATOMIC_ACQUIRE))
        __atomic_store_n(&t->late, t->current->token, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&t->mu);
    if (sp->watch_fd >= 0 && (null = open("/dev/null", O_WRONLY | O_CLOEXEC)) >= 0) {
        dup2(null, sp->watch_fd);  /* (atomic: the thread's fd stays valid) */
        close(null);
    }
}

/* After bs_stop: the starts begun but never noted (bs_thread.late), into out (room for
   sp->maxthreads); how many. */
static int bs_late(bs_spawner *sp, long *out) {
    int i, n = 0;
    for (i = 0; i < sp->maxthreads; i++) {
        long token = __atomic_load_n(&sp->threads[i].late, __ATOMIC_ACQUIRE);
        if (token > 0) out[n++] = token;
    }
    return n;
}

/* Stop the threads (a start not made yet is dropped, queued and waiting starts too), waiting
   for them until `seconds` have passed. Returns how many threads did not end by then (stuck
   in a system call: a mkdir on a hung file system): each is detached and left; it makes no
   start once it returns, and sp (which it may still touch) must never be freed. */
static int bs_stop(bs_spawner *sp, double seconds) {
    int i, stuck = 0;
    bs_req *r;
    uint64_t one = 1;
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);  /* pthread_timedjoin_np's clock */
    deadline.tv_sec += (time_t)seconds;
    deadline.tv_nsec += (long)((seconds - (double)(time_t)seconds) * 1e9);
    if (deadline.tv_nsec >= 1000000000L) { deadline.tv_sec++; deadline.tv_nsec -= 1000000000L; }
    __atomic_store_n(&sp->stopping, 1, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);  /* (bs_posix_spawn's begun: see bs_stuck) */
    for (i = 0; i < sp->maxthreads; i++) {
        bs_thread *t = &sp->threads[i];
        if (!t->started) continue;
        pthread_mutex_lock(&t->mu);
        t->stop = 1;
        if (write(t->evfd, &one, sizeof one) < 0) {}
        pthread_mutex_unlock(&t->mu);
    }
    for (i = 0; i < sp->maxthreads; i++) {
        bs_thread *t = &sp->threads[i];
        if (!t->started) continue;
        if (pthread_timedjoin_np(t->tid, NULL, &deadline) != 0) {
            pthread_detach(t->tid);  /* its requests, mutex and event fd stay: it may use them */
            bs_stuck(sp, t);
            stuck++;
            continue;
        }
        while ((r = t->head) != NULL) { t->head = r->next; bs_free_req(r); }
        while ((r = t->waiting) != NULL) { t->waiting = r->next; bs_free_req(r); }
        close(t->evfd);
        t->started = 0;
    }
    return stuck;
}

#endif  /* BALSAM_SPAWNER_BOUNDS_H */
