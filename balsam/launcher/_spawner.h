/* The C side of balsam/launcher/_spawner.pyx (see its docstring): native threads that start a
   worker rank's tasks with posix_spawn and never take the GIL. Included by the Cython module
   only. */
#ifndef BALSAM_SPAWNER_H
#define BALSAM_SPAWNER_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdlib.h>
#include <poll.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define BS_MAX_WAITING 64  /* chained starts waiting on one thread at most (polled fds) */
/* a chained start's err when it is handed back unstarted: the task it follows runs but cannot
   be watched (no pidfd, or no dup of it), so nothing here can know when it exits; the loop
   starts it once that task is reaped (never beside it) */
#define BS_RETURNED (-1)
/* a chained start's err when its watchdog notice (r->note) could not be written within
   BS_NOTE_WAIT_MS: the watchdog lives but reads nothing (its pipe is full). Handed back as
   BS_RETURNED is: a task the watchdog was not told of is never started here (if this process
   died, the watchdog could neither stop it nor count its start), and the thread never waits
   for good; the loop starts it itself (its own writes wait for the pipe) */
#define BS_UNNOTED (-2)
#define BS_NOTE_WAIT_MS 1000
#define BS_DROPPED (-3)  /* a stop (bs_stop) began before its posix_spawn: never made */
#define BS_WITHDRAWN (-4)  /* withdrawn (bs_withdraw) before its posix_spawn: never made, handed
                              back (and those behind it) for the loop to report killed/returned */

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

typedef struct bs_req {
    struct bs_req *next;
    long token;
    char *program, *cwd, *out;
    char *note;  /* written to sp->watch_fd just before the start (a chained one's ?JOBID line) */
    char **argv, **envp, **owned;  /* owned: argv's and the task's own strings */
    int nowned, prepared, pin;
    int after;      /* a chained start: the pidfd (owned) of the task to wait for, else -1 */
    long after_token;  /* ... or the start it follows, not made yet (then after is -1) */
    int keep;       /* keep a dup of the child's pidfd with its record (a start may follow) */
    int fail;       /* BS_RETURNED: handed back instead of started (it cannot wait) */
    int cancelled;  /* a chained start cancelled before it began: freed, never started */
    int dropped;    /* withdrawn (bs_withdraw: a kill or stop) while queued or being made:
                       not made unless its posix_spawn had begun (atomic) */
    int begun;      /* its posix_spawn is about to be called (atomic; bs_stop reads it) */
    cpu_set_t cpus;
} bs_req;

/* kept: a dup of fd while the record waits to be collected (a start asked for after this one
   takes it: bs_submit), closed by bs_collect */
typedef struct { long token; int pid, fd, err, kept; double when; } bs_done;

struct bs_spawner;
typedef struct {
    pthread_t tid;
    pthread_mutex_t mu;
    bs_req *head, *tail;  /* starts to make now, in order */
    bs_req *waiting;      /* chained starts whose predecessor may still run (unordered;
                             after_token > 0: the predecessor is not started yet) */
    int nwaiting, evfd, sleeping;  /* evfd: written to wake the thread while it sleeps */
    int stop, started;
    bs_req *current;  /* the start being made (t->mu): bs_withdraw finds it */
    long late;  /* a start whose posix_spawn began but that was never noted (a stop came:
                   killed, or the thread was left in posix_spawn): its note stands (bs_late) */
    cpu_set_t now;  /* this thread's affinity */
    struct bs_spawner *sp;
} bs_thread;

typedef struct bs_spawner {
    int epfd, evfd, nthreads, maxthreads, signalled;
    int watch_fd;  /* the task watchdog's pipe (opened anew, O_NONBLOCK, owned), or -1 */
    int no_pidfd_every;  /* tests: every Nth child's pidfd_open fails (EMFILE); 0: none */
    int hang_fd;  /* tests: a start reads a byte from it before its mkdir (a hung file system) */
    char *hang_dir;  /* tests: a FIFO opened (blocking) before a task's directory is (bs_hang_dir) */
    int stopping;  /* bs_stop began: nothing is started from now on (atomic: bs_stopping) */
    unsigned long nspawned;  /* children started (with no_pidfd_every) */
    unsigned long unnoted;  /* chained starts handed back BS_UNNOTED (atomic) */
    int note_wait_ms;  /* how long a note waits for room in the pipe (BS_NOTE_WAIT_MS) */
    posix_spawnattr_t attr;
    cpu_set_t all;
    pthread_mutex_t dmu;
    bs_done *done;
    size_t ndone, cap;
    bs_thread *threads;
} bs_spawner;

#define bs_stopping(sp) __atomic_load_n(&(sp)->stopping, __ATOMIC_ACQUIRE)

static void bs_free_req(bs_req *r) {
    int i;
    if (r->after >= 0) close(r->after);
    for (i = 0; i < r->nowned; i++) free(r->owned[i]);
    free(r->owned); free(r->argv); free(r->envp);
    free(r->program); free(r->cwd); free(r->out); free(r->note); free(r);
}

static int bs_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* tests (Spawner.hang_mkdirs): a start's mkdir first reads a byte, as on a hung file system */
static void bs_hang(bs_spawner *sp) { char b; if (sp->hang_fd >= 0 && read(sp->hang_fd, &b, 1) < 0) {} }

/* spawn.make_directory: the directory, else its missing parents first. */
static int bs_mkdirs(const char *path) {
    char *copy, *p;
    if (mkdir(path, 0777) == 0 || errno == EEXIST) return 0;
    if (errno != ENOENT) return errno;
    copy = strdup(path);
    if (copy == NULL) return ENOMEM;
    for (p = copy + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(copy, 0777) != 0 && errno != EEXIST) { int e = errno; free(copy); return e; }
        *p = '/';
    }
    free(copy);
    if (mkdir(path, 0777) == 0) return 0;
    if (errno == EEXIST) return bs_is_dir(path) ? 0 : EEXIST;
    return errno;
}

static void bs_push(bs_spawner *sp, long token, int pid, int fd, int err, double when,
                    int kept) {
    uint64_t one = 1;
    pthread_mutex_lock(&sp->dmu);
    if (sp->ndone == sp->cap) {
        size_t cap = sp->cap ? 2 * sp->cap : 64;
        bs_done *grown = realloc(sp->done, cap * sizeof(bs_done));
        if (grown == NULL) {  /* cannot note it: end it rather than lose it */
            pthread_mutex_unlock(&sp->dmu);
            if (pid > 0) kill(-pid, SIGKILL);  /* left a zombie: the loop never knew it */
            if (fd >= 0) close(fd);
            if (kept >= 0) close(kept);
            return;
        }
        sp->done = grown; sp->cap = cap;
    }
    sp->done[sp->ndone].token = token; sp->done[sp->ndone].pid = pid;
    sp->done[sp->ndone].fd = fd; sp->done[sp->ndone].err = err;
    sp->done[sp->ndone].when = when; sp->done[sp->ndone].kept = kept;
    sp->ndone++;
    if (fd < 0 && !sp->signalled) {  /* no pidfd will wake the loop: this does */
        sp->signalled = 1;
        if (write(sp->evfd, &one, sizeof one) < 0) {}
    }
    pthread_mutex_unlock(&sp->dmu);
}

#include "_spawner_chain.h"
#include "_spawner_bounds.h"

static void bs_start(bs_thread *t, bs_req *r) {
    bs_spawner *sp = t->sp;
    cpu_set_t *want = r->pin ? &r->cpus : &sp->all;
    pid_t pid = -1;
    int err = 0, fd = -1, kept, noted = 0;
    struct timespec now;
    if (!CPU_EQUAL(want, &t->now) && sched_setaffinity(0, sizeof(cpu_set_t), want) == 0)
        t->now = *want;
    err = r->fail;
    if (!err && r->prepared != 1) {
        bs_hang(sp);
        err = bs_mkdirs(r->cwd);
    }
    /* a stop that gave up waiting for this thread (stuck in mkdir: bs_stop) may have come
       meanwhile: nothing would take the task over, so it is not started (nor noted); a kill
       or stop of this job (bs_withdraw): not started, handed back */
    if (bs_stopping(sp)) return;
    if (!err && bs_dropped(sp, r)) err = BS_DROPPED;
    /* the watchdog then finds the task by its job id if this process dies before the loop
       registers it; if it cannot be told, the start is handed back (bs_note) */
    if (!err && r->note != NULL && sp->watch_fd >= 0) {
        err = bs_note(sp, r->note);
        if (err) __atomic_add_fetch(&sp->unnoted, 1, __ATOMIC_RELAXED);
        noted = !err;
    }
    clock_gettime(CLOCK_REALTIME, &now);  /* the task's real start (a chained one's too) */
    if (!err) err = bs_posix_spawn(sp, r, &pid);
    if (err == ENOENT && r->prepared == 1 && !bs_is_dir(r->cwd)) {  /* made ahead, removed since */
        bs_hang(sp);
        err = bs_mkdirs(r->cwd);
        if (!err) err = bs_posix_spawn(sp, r, &pid);
    }
    /* the stop came while the note waited for room, or the open or mkdir hung: not made, and
       the watchdog told so (^JOBID: no start of it to count); or it came during the spawn
       (a child hung in chdir): the task is ended at once, nobody would reap or report it */
    if (err == BS_DROPPED) {
        if (noted) bs_unnote(sp, r->note);
        if (bs_stopping(sp)) return;
        err = BS_WITHDRAWN;  /* (r->dropped) */
    }
    if (!err && bs_stopping(sp)) {  /* made: it ran, if only for a moment (bs_late) */
        __atomic_store_n(&t->late, r->token, __ATOMIC_RELEASE);
        kill(-pid, SIGKILL);
        return;
    }
    if (!err) {
        if (r->pin && !CPU_EQUAL(&r->cpus, &t->now))  /* not allowed here: pin the task */
            sched_setaffinity(pid, sizeof(cpu_set_t), &r->cpus);
        fd = (int)syscall(SYS_pidfd_open, pid, 0);
        if (sp->no_pidfd_every > 0 && fd >= 0  /* the tests' stand-in for EMFILE or ENOSYS */
                && __atomic_add_fetch(&sp->nspawned, 1, __ATOMIC_RELAXED)
                   % (unsigned long)sp->no_pidfd_every == 0) { close(fd); fd = -1; }
        if (fd < 0) fd = -1;
    }
    /* under t->mu: a start asked for after this one finds it either waiting (resolved
       here) or with its record (bs_submit takes the kept dup), never in between. Started
       without a pidfd (or handed back): those waiting for it are handed back (bs_resolve) */
    pthread_mutex_lock(&t->mu);
    bs_resolve(t, r->token, fd, err);
    kept = r->keep && fd >= 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;
    /* first: a ready pidfd is noted */
    bs_push(sp, r->token, err ? -1 : (int)pid, fd, err,
            (double)now.tv_sec + 1e-9 * (double)now.tv_nsec, kept);
    pthread_mutex_unlock(&t->mu);
    if (fd >= 0) {
        struct epoll_event ev;
        memset(&ev, 0, sizeof ev);
        ev.events = EPOLLIN;
        ev.data.fd = fd;
        epoll_ctl(sp->epfd, EPOLL_CTL_ADD, fd, &ev);
    }
}

static void *bs_serve(void *arg) {
    bs_thread *t = (bs_thread *)arg;
    bs_req *r;
    pthread_setname_np(pthread_self(), "balsam-spawn");  /* as ps -L and top -H show it */
    pthread_mutex_lock(&t->mu);
    for (;;) {
        if (t->stop) { pthread_mutex_unlock(&t->mu); return NULL; }
        if (t->head == NULL) {  /* a request that came while it prepared: not slept on */
            if (!bs_prepare_waiting(t)) bs_sleep(t);
            continue;
        }
        r = t->head;
        t->head = r->next;
        if (t->head == NULL) t->tail = NULL;
        t->current = r;
        pthread_mutex_unlock(&t->mu);
        if (!r->cancelled) bs_start(t, r);  /* cancelled under t->mu: never begun */
        pthread_mutex_lock(&t->mu);
        t->current = NULL;  /* (before the free: bs_withdraw reads it under t->mu) */
        bs_free_req(r);
    }
}

static void bs_not_ignored(sigset_t *sigs);

static bs_spawner *bs_new(int epfd, int maxthreads) {
    bs_spawner *sp = calloc(1, sizeof(bs_spawner));
    sigset_t sigs;
    if (sp == NULL) return NULL;
    sp->threads = calloc(maxthreads, sizeof(bs_thread));
    sp->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (sp->threads == NULL || sp->evfd < 0) {
        if (sp->evfd >= 0) close(sp->evfd);
        free(sp->threads); free(sp); return NULL;
    }
    sp->epfd = epfd; sp->maxthreads = maxthreads; sp->watch_fd = sp->hang_fd = -1;
    sp->note_wait_ms = BS_NOTE_WAIT_MS;
    pthread_mutex_init(&sp->dmu, NULL);
    sched_getaffinity(0, sizeof(cpu_set_t), &sp->all);
    posix_spawnattr_init(&sp->attr);
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGPIPE);
    sigaddset(&sigs, SIGXFSZ);
    bs_not_ignored(&sigs);
    posix_spawnattr_setsigdefault(&sp->attr, &sigs);
    posix_spawnattr_setflags(&sp->attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGDEF);
    return sp;
}

/* Add to sigs every signal not ignored now (glibc refuses its internal ones). glibc's child
   resets each signal outside the POSIX_SPAWN_SETSIGDEF set with two rt_sigaction calls (a
   query, then SIG_DFL unless it was SIG_IGN) and each inside with one (SIG_DFL): the same
   dispositions after the exec (which resets handlers to SIG_DFL and keeps SIG_IGN) for
   56 system calls fewer per child, as long as no signal becomes ignored later (the worker
   rank ignores none; tests/test_spawn_threads.py compares a child's on both paths). */
static void bs_not_ignored(sigset_t *sigs) {
    int sig;
    struct sigaction now;
    for (sig = 1; sig < NSIG; sig++)
        if (sigaction(sig, NULL, &now) == 0 && now.sa_handler != SIG_IGN)
            sigaddset(sigs, sig);
}

/* Queue r on thread `which` (made on first use); 0, or the error of pthread_create. A
   request with r->after >= 0 (a chained start) waits until that pidfd is readable. */
static int bs_submit(bs_spawner *sp, int which, bs_req *r) {
    bs_thread *t = &sp->threads[which];
    if (!t->started) {
        int err;
        t->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (t->evfd < 0) return errno;
        pthread_mutex_init(&t->mu, NULL);
        t->sp = sp;
        t->now = sp->all;
        err = pthread_create(&t->tid, NULL, bs_serve, t);
        if (err) { close(t->evfd); return err; }
        t->started = 1;
        sp->nthreads++;
    }
    r->next = NULL;
    r->cancelled = r->fail = r->dropped = r->begun = 0;
    pthread_mutex_lock(&t->mu);
    if ((r->after >= 0 || r->after_token > 0) && t->nwaiting >= BS_MAX_WAITING) {
        pthread_mutex_unlock(&t->mu);
        return EAGAIN;
    }
    if (r->after_token > 0) {  /* made already? its record (not collected yet) has its pidfd */
        size_t i;
        pthread_mutex_lock(&sp->dmu);
        for (i = 0; i < sp->ndone; i++) {
            bs_done *d = &sp->done[i];
            if (d->token != r->after_token) continue;
            /* a dup, not the kept fd itself: a start asked for after this one is withdrawn
               (bs_cancel) and the next one asked for after the same start waits too */
            if (d->kept >= 0) r->after = fcntl(d->kept, F_DUPFD_CLOEXEC, 0);
            /* it failed (err > 0): nothing runs, made now; it runs unwatched (no pidfd, no
               dup) or was handed back: handed back too, never started beside it */
            if (r->after < 0 && d->err <= 0) r->fail = BS_RETURNED;
            r->after_token = 0;
            break;
        }
        pthread_mutex_unlock(&sp->dmu);
    }
    if (r->after >= 0 || r->after_token > 0) {
        r->next = t->waiting; t->waiting = r; t->nwaiting++;
    } else {
        bs_ready(t, r);
    }
    bs_wake(t);
    pthread_mutex_unlock(&t->mu);
    return 0;
}

static void bs_free(bs_spawner *sp) {
    size_t i;
    for (i = 0; i < sp->ndone; i++) {
        if (sp->done[i].fd >= 0) close(sp->done[i].fd);
        if (sp->done[i].kept >= 0) close(sp->done[i].kept);
    }
    close(sp->evfd);
    if (sp->watch_fd >= 0) close(sp->watch_fd);
    free(sp->hang_dir);
    posix_spawnattr_destroy(&sp->attr);
    free(sp->done); free(sp->threads); free(sp);
}

/* Move the starts noted so far to out (room for cap), draining the event fd. */
static size_t bs_collect(bs_spawner *sp, bs_done *out, size_t cap) {
    size_t n, i;
    uint64_t value;
    pthread_mutex_lock(&sp->dmu);
    n = sp->ndone < cap ? sp->ndone : cap;
    memcpy(out, sp->done, n * sizeof(bs_done));
    for (i = 0; i < n; i++) if (out[i].kept >= 0) { close(out[i].kept); out[i].kept = -1; }
    for (i = n; i < sp->ndone; i++) sp->done[i - n] = sp->done[i];
    sp->ndone -= n;
    if (sp->signalled && sp->ndone == 0) {
        sp->signalled = 0;
        if (read(sp->evfd, &value, sizeof value) < 0) {}
    }
    pthread_mutex_unlock(&sp->dmu);
    return n;
}

static void bs_cpu_zero(bs_req *r) { CPU_ZERO(&r->cpus); }
static void bs_cpu_set(bs_req *r, int cpu) { if (cpu >= 0 && cpu < CPU_SETSIZE) CPU_SET(cpu, &r->cpus); }

#endif  /* BALSAM_SPAWNER_H */
