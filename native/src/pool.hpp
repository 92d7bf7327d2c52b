// The top-k drivers' worker pool (pool.cpp).
#pragma once
#include <functional>

namespace shelfrank {

// Runs job(w) for every w in [0, t): job(0) on the calling thread, the others on persistent
// workers (or on fresh threads when the pool is busy with another call). Returns when all have
// finished; then rethrows the first exception any of them threw.
void parallel_run(int t, const std::function<void(int)>& job);

}  // namespace shelfrank
