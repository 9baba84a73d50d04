/* Chained starts, the part of balsam/launcher/_spawner.h that waits (see _spawner.pyx's
   docstring): a start that waits in its thread until the task it follows has exited, polling
   a dup of that task's pidfd (never reaping it), its pidfd passed on by the start it follows
   when that one was still to be made, withdrawn by bs_cancel until it begins. Included by
   _spawner.h only, after its types and helpers. */
#ifndef BALSAM_SPAWNER_CHAIN_H
#define BALSAM_SPAWNER_CHAIN_H

/* Append r to the queue of starts to make now (t->mu held). */
static void bs_ready(bs_thread *t, bs_req *r) {
    r->next = NULL;
    if (t->tail) t->tail->next = r; else t->head = r;
    t->tail = r;
}

/* The starts waiting for start `token` now wait for its child's pidfd `fd` (a dup of it), or
   for `after_token` (the wait of a cancelled start: they take it over); with `back` (what
   they follow runs unwatched, or was handed back itself) or no dup of `fd`, they are handed
   back (BS_RETURNED: queued to be reported, never started, and those behind them too); with
   none of these (the start failed, or follows a task that exited), they are made now (t->mu
   held). */
static void bs_pass_on(bs_thread *t, long token, int fd, long after_token, int back) {
    bs_req **at = &t->waiting, *r;
    while ((r = *at) != NULL) {
        if (r->cancelled || r->after >= 0 || r->after_token != token) {  /* swept: bs_sleep */
            at = &r->next;
            continue;
        }
        r->after_token = back ? 0 : after_token;
        if (!back && fd >= 0 && (r->after = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0) back = 1;
        if (back) r->fail = BS_RETURNED;
        if (r->after >= 0 || r->after_token > 0) { at = &r->next; continue; }
        *at = r->next;
        t->nwaiting--;
        bs_ready(t, r);
    }
}

/* Start `token` is made (err 0, pidfd fd: -1 if it has none), failed (err > 0) or was
   handed back (err BS_RETURNED): what waits for it follows (t->mu held). */
static void bs_resolve(bs_thread *t, long token, int fd, int err) {
    bs_pass_on(t, token, err ? -1 : fd, 0, err < 0 || (err == 0 && fd < 0));
}

static void bs_wake(bs_thread *t) {  /* t->mu held */
    uint64_t one = 1;
    if (t->sleeping) {
        t->sleeping = 0;
        if (write(t->evfd, &one, sizeof one) < 0) {}
    }
}

/* Move the waiting starts whose predecessor has exited (or that were cancelled) out of the
   waiting list: the first to the end of the queue, the others to *gone (t->mu held). */
static void bs_sort_waiting(bs_thread *t, struct pollfd *fds, int n, bs_req **gone) {
    bs_req **at = &t->waiting, *r;
    while ((r = *at) != NULL) {
        int i, ready = r->cancelled;
        for (i = 0; i < n && !ready; i++)
            ready = r->after >= 0 && fds[i].fd == r->after
                    && (fds[i].revents & (POLLIN | POLLHUP | POLLERR));
        if (!ready) { at = &r->next; continue; }
        *at = r->next;
        if (r->cancelled) { r->next = *gone; *gone = r; continue; }  /* uncounted: bs_cancel */
        t->nwaiting--;
        bs_ready(t, r);
    }
}

/* Sleep until a request comes or a waiting start's predecessor exits (t->mu held on entry
   and on return). The predecessor is never reaped here (its pidfd is only polled): the loop
   reaps it, so its pid cannot be reused while the loop may still signal it. */
static void bs_sleep(bs_thread *t) {
    struct pollfd fds[1 + BS_MAX_WAITING];
    bs_req *r, *gone = NULL;
    uint64_t value;
    int n = 0;
    for (r = t->waiting; r != NULL && n < BS_MAX_WAITING; r = r->next)
        if (r->after >= 0 && !r->cancelled) {
            fds[1 + n].fd = r->after; fds[1 + n].events = POLLIN; n++;
        }
    fds[0].fd = t->evfd; fds[0].events = POLLIN;
    t->sleeping = 1;
    pthread_mutex_unlock(&t->mu);
    /* the fds stay open meanwhile: a cancelled request is freed by this thread only */
    if (poll(fds, 1 + n, -1) < 0) { int i; for (i = 0; i <= n; i++) fds[i].revents = 0; }
    if (fds[0].revents & POLLIN) { if (read(t->evfd, &value, sizeof value) < 0) {} }
    pthread_mutex_lock(&t->mu);
    t->sleeping = 0;
    bs_sort_waiting(t, fds + 1, n, &gone);
    if (gone != NULL) {
        pthread_mutex_unlock(&t->mu);
        while ((r = gone) != NULL) { gone = r->next; bs_free_req(r); }
        pthread_mutex_lock(&t->mu);
    }
}

/* Make the directory and output file (spawn.prepare) of the chained starts waiting here that
   have none yet, while the tasks they follow run (t->mu held on entry and on return; the
   requests stay valid unlocked: only this thread frees them). Returns how many it made:
   if any, t->mu was let go and a request may have come meanwhile (the caller looks again
   before it sleeps: no write of the event fd woke it, it was not sleeping). */
static int bs_prepare_waiting(bs_thread *t) {
    bs_req *todo[BS_MAX_WAITING], *r;
    int n = 0, i, fd;
    for (r = t->waiting; r != NULL && n < BS_MAX_WAITING; r = r->next)
        if (!r->prepared && !r->cancelled) todo[n++] = r;
    if (n == 0) return 0;
    pthread_mutex_unlock(&t->mu);
    for (i = 0; i < n; i++) {
        r = todo[i];
        if (bs_mkdirs(r->cwd) != 0) { r->prepared = -1; continue; }  /* tried: at its start */
        /* truncated at the start; O_EXCL: made if missing, an existing one never opened (a
           FIFO's reader would take this open's close as its end); O_NONBLOCK (bs_posix_spawn) */
        fd = open(r->out, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NONBLOCK, 0666);
        if (fd >= 0) close(fd);
        r->prepared = 1;
    }
    pthread_mutex_lock(&t->mu);
    return n;
}

/* Cancel the chained start `token` on thread `which` if it has not begun: 1 (it never will;
   the thread frees it), else 0 (it has begun or ended: it comes back through bs_collect). */
static int bs_cancel(bs_spawner *sp, int which, long token) {
    bs_thread *t = &sp->threads[which];
    bs_req *r, *it = NULL;
    int found = 0, waiting;
    if (!t->started) return 0;
    pthread_mutex_lock(&t->mu);
    for (r = t->waiting; r != NULL && it == NULL; r = r->next)
        if (r->token == token && !r->cancelled) it = r;
    waiting = it != NULL;
    for (r = t->head; r != NULL && it == NULL; r = r->next)
        if (r->token == token && !r->cancelled) it = r;
    if (it != NULL) {
        uint64_t one = 1;
        found = it->cancelled = 1;
        if (waiting) t->nwaiting--;  /* its room is free now, not once the thread frees it */
        /* a start asked for after it now waits for what it waited for */
        bs_pass_on(t, token, it->after, it->after >= 0 ? 0 : it->after_token,
                   it->fail == BS_RETURNED);
        /* even if it is not sleeping yet: its next poll returns at once and frees the
           request and its pidfd, rather than when the task it followed ends */
        t->sleeping = 0;
        if (write(t->evfd, &one, sizeof one) < 0) {}
    }
    pthread_mutex_unlock(&t->mu);
    return found;
}

#endif  /* BALSAM_SPAWNER_CHAIN_H */
