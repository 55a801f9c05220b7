// A small persistent thread pool for the kernels: fork-safe and contention-aware.
//
// * Work below a threshold measured in nanoseconds (the caller's estimate of the whole call)
//   runs on the calling thread: waking a thread costs microseconds, and on a busy machine
//   a woken thread may not run for a whole scheduler slice.
// * The caller works too: tasks are claimed from an atomic counter by whoever is running, so
//   a helper the scheduler does not run only costs the tasks it already claimed, never the
//   call.  Tasks are small (the kernels cut their work in many more tasks than threads).
// * One job at a time: a second Python thread that finds the pool busy runs its kernel on its
//   own thread (the GIL is released inside the kernels, so those calls do run concurrently).
// * Helpers block on a condition variable between jobs: no spinning that would steal CPU
//   from other processes.
// * Fork: the child of a fork has only the forking thread, so the pool is abandoned there
//   (pthread_atfork) and a new one started by the child's first parallel call.
// * Results never depend on the threads: the kernels cut their work by the shape of the
//   input only, and each task computes what it would compute alone.
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>

#include "kernels.hpp"

namespace lk {
namespace {

constexpr int kMaxThreads = 256;

struct Job {
    TaskFn fn;
    void* ctx;
    int64_t ntasks;
    int wanted;  // helpers that may join
    int joined;  // helpers that joined (under the pool's mutex)
    int active;  // helpers still working on it (under the pool's mutex)
    std::atomic<int64_t> next;
    std::atomic<int64_t> done;
};

struct Pool {
    pthread_mutex_t mu;
    pthread_cond_t wake;
    pthread_cond_t finished;
    pthread_t threads[kMaxThreads];
    int started = 0;
    uint64_t epoch = 0;
    Job* job = nullptr;
    std::atomic<bool> busy{false};

    Pool() {
        pthread_mutex_init(&mu, nullptr);
        pthread_cond_init(&wake, nullptr);
        pthread_cond_init(&finished, nullptr);
    }
};

pthread_mutex_t g_create = PTHREAD_MUTEX_INITIALIZER;
std::atomic<Pool*> g_pool{nullptr};
std::atomic<int> g_threads{0};           // 0: not decided yet
std::atomic<double> g_min_ns{50000.0};  // work below this runs on the calling thread
std::atomic<int64_t> g_jobs{0};         // jobs that ran on the pool (for the tests)
std::atomic<int64_t> g_stream_bytes{-1};  // -1: not decided yet
std::atomic<int64_t> g_helper_tasks{0};  // tasks that helper threads ran (for the tests)

int cpus_available() {
#ifdef __linux__
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? static_cast<int>(n) : 1;
}

int default_threads() {
    const char* env = std::getenv("LOGITKIT_NUM_THREADS");
    if (env != nullptr && *env != '\0') {
        char* end = nullptr;
        long n = std::strtol(env, &end, 10);
        if (end != env && *end == '\0' && n > 0) return n < kMaxThreads ? static_cast<int>(n) : kMaxThreads;
    }
    int n = cpus_available();
    return n < kMaxThreads ? n : kMaxThreads;
}

int64_t run_tasks(Job* j) {
    int64_t ran = 0;
    for (;; ++ran) {
        int64_t i = j->next.fetch_add(1, std::memory_order_relaxed);
        if (i >= j->ntasks) return ran;
        j->fn(j->ctx, i);
        j->done.fetch_add(1, std::memory_order_release);
    }
}

void* worker(void* arg) {
    Pool* p = static_cast<Pool*>(arg);
    pthread_mutex_lock(&p->mu);
    uint64_t seen = p->epoch;
    for (;;) {
        while (p->epoch == seen) pthread_cond_wait(&p->wake, &p->mu);
        seen = p->epoch;
        Job* j = p->job;
        if (j == nullptr || j->joined >= j->wanted) continue;
        ++j->joined;
        ++j->active;
        pthread_mutex_unlock(&p->mu);
        g_helper_tasks.fetch_add(run_tasks(j), std::memory_order_relaxed);
        pthread_mutex_lock(&p->mu);
        if (--j->active == 0) pthread_cond_signal(&p->finished);
    }
    return nullptr;  // never reached: helpers live as long as the process
}

Pool* get_pool() {
    Pool* p = g_pool.load(std::memory_order_acquire);
    if (p != nullptr) return p;
    pthread_mutex_lock(&g_create);
    p = g_pool.load(std::memory_order_relaxed);
    if (p == nullptr) {
        p = new (std::nothrow) Pool();
        g_pool.store(p, std::memory_order_release);
    }
    pthread_mutex_unlock(&g_create);
    return p;
}

// Start helpers up to `want` (under the pool's mutex); returns how many there are.
int ensure_helpers(Pool* p, int want) {
    while (p->started < want && p->started < kMaxThreads) {
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        // Block every signal in the helpers: signals (Ctrl-C) go to Python's main thread.
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        int rc = pthread_create(&p->threads[p->started], &attr, worker, p);
        pthread_sigmask(SIG_SETMASK, &old, nullptr);
        pthread_attr_destroy(&attr);
        if (rc != 0) break;
        ++p->started;
    }
    return p->started;
}

void atfork_prepare() { pthread_mutex_lock(&g_create); }
void atfork_parent() { pthread_mutex_unlock(&g_create); }
void atfork_child() {
    // The helpers did not survive the fork, and the old pool's mutexes may be held by threads
    // that no longer exist: forget it (a few hundred bytes) and start afresh when needed.
    g_pool.store(nullptr, std::memory_order_relaxed);
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    std::memcpy(&g_create, &fresh, sizeof fresh);
}

struct AtFork {
    AtFork() { pthread_atfork(atfork_prepare, atfork_parent, atfork_child); }
} g_atfork;

}  // namespace

int num_threads() {
    int n = g_threads.load(std::memory_order_relaxed);
    if (n == 0) {
        n = default_threads();
        g_threads.store(n, std::memory_order_relaxed);
    }
    return n;
}

void set_num_threads(int n) {
    if (n <= 0) n = default_threads();
    g_threads.store(n < kMaxThreads ? n : kMaxThreads, std::memory_order_relaxed);
}

int64_t pool_jobs() { return g_jobs.load(std::memory_order_relaxed); }
// Outputs larger than about the last-level cache are streamed, as glibc's memcpy does (from 3/4
// of the shared cache on): below that, the output is likelier to be read from cache next, and on
// our machines streaming stores made a 32 MiB softmax slower, not faster.
int64_t stream_min_bytes() {
    int64_t b = g_stream_bytes.load(std::memory_order_relaxed);
    if (b < 0) {
        long l3 = -1;
#ifdef _SC_LEVEL3_CACHE_SIZE
        l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
        b = l3 > 0 ? static_cast<int64_t>(l3) / 4 * 3 : int64_t(32) << 20;
        g_stream_bytes.store(b, std::memory_order_relaxed);
    }
    return b;
}
void set_stream_min_bytes(int64_t bytes) { g_stream_bytes.store(bytes, std::memory_order_relaxed); }
int64_t pool_helper_tasks() { return g_helper_tasks.load(std::memory_order_relaxed); }

double min_parallel_ns() { return g_min_ns.load(std::memory_order_relaxed); }
void set_min_parallel_ns(double ns) { g_min_ns.store(ns < 0 ? 0 : ns, std::memory_order_relaxed); }

void parallel_for(int64_t ntasks, double ns_per_task, TaskFn fn, void* ctx) {
    if (ntasks <= 0) return;
    double total = ns_per_task * static_cast<double>(ntasks);
    double min_ns = min_parallel_ns();
    int threads = num_threads();
    int64_t want = threads;
    if (min_ns > 0) {
        double by_work = total / min_ns;
        if (by_work < static_cast<double>(want)) want = static_cast<int64_t>(by_work);
    }
    if (want > ntasks) want = ntasks;
    Pool* p = (want >= 2) ? get_pool() : nullptr;
    if (p == nullptr || p->busy.exchange(true, std::memory_order_acquire)) {
        for (int64_t i = 0; i < ntasks; ++i) fn(ctx, i);  // small, or the pool is busy
        return;
    }
    g_jobs.fetch_add(1, std::memory_order_relaxed);
    Job j;
    j.fn = fn;
    j.ctx = ctx;
    j.ntasks = ntasks;
    j.joined = 0;
    j.active = 0;
    j.next.store(0, std::memory_order_relaxed);
    j.done.store(0, std::memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    j.wanted = ensure_helpers(p, static_cast<int>(want) - 1);
    if (j.wanted > static_cast<int>(want) - 1) j.wanted = static_cast<int>(want) - 1;
    p->job = &j;
    ++p->epoch;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);

    run_tasks(&j);

    pthread_mutex_lock(&p->mu);
    p->job = nullptr;  // no helper joins from now on
    while (j.active > 0) pthread_cond_wait(&p->finished, &p->mu);
    pthread_mutex_unlock(&p->mu);
    p->busy.store(false, std::memory_order_release);
}

}  // namespace lk
