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
