// A persistent worker pool for the top-k drivers: threads are started once (lazily, as many as the
// largest `threads` asked for so far) and then woken per call, instead of spawning std::threads on
// every call. One call uses the pool at a time; a call that finds it busy (another Python thread
// releasing the GIL into the kernel at the same moment) spawns its own threads as before, so
// concurrent callers never wait on each other. After fork() the child gets a fresh, empty pool
// (the parent's threads do not exist there). The pool is never destroyed: idle workers blocked on
// a condition variable are simply ended with the process.
#include <pthread.h>

#include <chrono>
#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "pool.hpp"

namespace shelfrank {
namespace {

// condition_variable::wait(unique_lock&) is a libstdc++ symbol versioned GLIBCXX_3.4.30 since GCC 12,
// above the wheels' GLIBCXX_3.4.29 cap (scripts/build_wheels.py: GCC 11's libstdc++, manylinux_2_34).
// wait_for is inline (pthread_cond_clockwait, glibc 2.30), so waiting through it needs no new symbol.
template <class Pred>
void wait_until_true(std::condition_variable& cv, std::unique_lock<std::mutex>& lock, Pred pred) {
    while (!pred()) cv.wait_for(lock, std::chrono::hours(1));
}

class Pool {
public:
    // Runs job(w) for w in [1, t) on the workers and job(0) here; false (nothing run) when busy.
    bool try_run(int t, const std::function<void(int)>& job, std::vector<std::exception_ptr>& errors) {
        std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
        if (!busy.owns_lock()) return false;
        {
            std::lock_guard<std::mutex> lock(m_);
            while (int(workers_.size()) < t - 1) {
                const int w = int(workers_.size()) + 1;
                workers_.emplace_back([this, w] { loop(w); });
            }
            job_ = &job;
            errors_ = &errors;
            width_ = t;
            pending_ = t - 1;
            ++generation_;
        }
        wake_.notify_all();
        try {
            job(0);
        } catch (...) {
            errors[0] = std::current_exception();
        }
        std::unique_lock<std::mutex> lock(m_);
        wait_until_true(done_, lock, [this] { return pending_ == 0; });
        job_ = nullptr;
        return true;
    }

private:
    void loop(int w) {
        uint64_t seen = 0;
        for (;;) {
            const std::function<void(int)>* job;
            std::vector<std::exception_ptr>* errors;
            {
                std::unique_lock<std::mutex> lock(m_);
                wait_until_true(wake_, lock, [&] { return generation_ != seen && w < width_; });
                seen = generation_;
                job = job_;
                errors = errors_;
            }
            try {
                (*job)(w);
            } catch (...) {
                (*errors)[size_t(w)] = std::current_exception();
            }
            std::lock_guard<std::mutex> lock(m_);
            if (--pending_ == 0) done_.notify_one();
        }
    }

    std::mutex busy_;  // held for a whole call
    std::mutex m_;     // guards the fields below
    std::condition_variable wake_, done_;
    std::vector<std::thread> workers_;
    const std::function<void(int)>* job_ = nullptr;
    std::vector<std::exception_ptr>* errors_ = nullptr;
    int width_ = 0, pending_ = 0;
    uint64_t generation_ = 0;
};

Pool* g_pool = nullptr;
std::once_flag g_once;

void fresh_pool_after_fork() { g_pool = new Pool; }  // the parent's pool (and its threads) stay behind

Pool& pool() {
    std::call_once(g_once, [] {
        g_pool = new Pool;
        pthread_atfork(nullptr, nullptr, fresh_pool_after_fork);
    });
    return *g_pool;
}

}  // namespace

void parallel_run(int t, const std::function<void(int)>& job) {
    std::vector<std::exception_ptr> errors(size_t(t > 0 ? t : 1));
    if (t <= 1) {
        job(0);
        return;
    }
    if (!pool().try_run(t, job, errors)) {
        std::vector<std::thread> threads;
        for (int w = 1; w < t; ++w)
            threads.emplace_back([&, w] {
                try {
                    job(w);
                } catch (...) {
                    errors[size_t(w)] = std::current_exception();
                }
            });
        try {
            job(0);
        } catch (...) {
            errors[0] = std::current_exception();
        }
        for (auto& th : threads) th.join();
    }
    for (auto& e : errors)
        if (e) std::rethrow_exception(e);
}

}  // namespace shelfrank
