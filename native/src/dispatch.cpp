// Runtime CPU dispatch: detect once (cpuid/xgetbv on x86-64, getauxval(AT_HWCAP) on aarch64),
// pick the best kernel table, honour SHELFRANK_FORCE_ISA. Each table gets the best popcount scan
// its CPU runs (avx512vnni without VPOPCNTDQ, e.g. Cascade Lake, keeps the POPCNT scan).
#include <atomic>
#include <deque>
#include <cstdlib>
#include <mutex>
#include <stdexcept>

#include "shelfrank/topk.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif

namespace shelfrank {
namespace {

#if defined(__x86_64__) || defined(_M_X64)
uint64_t xgetbv0() {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (uint64_t(hi) << 32) | lo;
}

struct X86Features {
    bool avx2 = false, avx512vnni = false, avxvnni = false, vpopcntdq = false;
};

X86Features detect_x86() {
    X86Features f;
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    const bool osxsave = c & (1u << 27), fma = c & (1u << 12), avx = c & (1u << 28), popcnt = c & (1u << 23);
    if (!osxsave || !avx) return f;
    const uint64_t xcr0 = xgetbv0();
    const bool ymm_os = (xcr0 & 0x6) == 0x6;             // SSE + AVX state
    const bool zmm_os = (xcr0 & 0xE6) == 0xE6;           // + opmask, ZMM_Hi256, Hi16_ZMM
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
    const bool avx2 = b & (1u << 5);
    const bool avx512f = b & (1u << 16), avx512bw = b & (1u << 30), avx512vl = b & (1u << 31);
    const bool avx512vnni_bit = c & (1u << 11), vpopcntdq_bit = c & (1u << 14);
    f.avx2 = ymm_os && avx2 && fma && popcnt;
    f.avx512vnni = f.avx2 && zmm_os && avx512f && avx512bw && avx512vl && avx512vnni_bit;
    f.vpopcntdq = f.avx2 && zmm_os && avx512f && avx512bw && vpopcntdq_bit;
    unsigned a1 = 0, b1 = 0, c1 = 0, d1 = 0;
    if (__get_cpuid_count(7, 1, &a1, &b1, &c1, &d1)) f.avxvnni = f.avx2 && (a1 & (1u << 4));
    return f;
}
#endif

// A table with its popcount scan filled in; the deque keeps every address stable.
const IsaKernels* with_hamming(std::deque<IsaKernels>& store, const IsaKernels* k, const HammingKernel* h) {
    store.push_back(*k);
    store.back().hamming = *h;
    return &store.back();
}

// Every table this build and CPU can run, worst first.
std::vector<const IsaKernels*> available(std::deque<IsaKernels>& store) {
    std::vector<const IsaKernels*> v{with_hamming(store, &kSerialKernels, &kSerialHamming)};
#if defined(__x86_64__) || defined(_M_X64)
    const X86Features f = detect_x86();
    const HammingKernel* best = f.vpopcntdq ? avx512_hamming() : avx2_hamming();
    if (f.avx2) v.push_back(with_hamming(store, avx2_kernels(), avx2_hamming()));
    if (f.avxvnni) v.push_back(with_hamming(store, avxvnni_kernels(), avx2_hamming()));
    if (f.avx512vnni) v.push_back(with_hamming(store, avx512vnni_kernels(), best));
#elif defined(__aarch64__) && defined(__linux__)
    const unsigned long hw = getauxval(AT_HWCAP);
    const bool asimd = hw & (1ul << 1);      // HWCAP_ASIMD
    const bool asimddp = hw & (1ul << 20);   // HWCAP_ASIMDDP
    if (asimd) v.push_back(with_hamming(store, neon_kernels(), neon_hamming()));
    if (asimd && asimddp) v.push_back(with_hamming(store, neon_dot_kernels(), neon_hamming()));
#endif
    return v;
}

const std::vector<const IsaKernels*>& tables() {
    static std::deque<IsaKernels> store;
    static const std::vector<const IsaKernels*> t = available(store);
    return t;
}

std::string names() {
    std::string s;
    for (const IsaKernels* k : tables()) s += (s.empty() ? "" : ", ") + std::string(k->name);
    return s;
}

const IsaKernels* find(const std::string& name) {
    for (const IsaKernels* k : tables())
        if (name == k->name) return k;
    throw std::invalid_argument("ISA '" + name + "' is not available on this CPU/build; capabilities(): " +
                                names());
}

std::atomic<const IsaKernels*> g_active{nullptr};
std::mutex g_init;

}  // namespace

std::vector<std::string> capabilities() {
    std::vector<std::string> out;
    for (const IsaKernels* k : tables()) out.emplace_back(k->name);
    return out;
}

const IsaKernels& active_kernels() {
    const IsaKernels* k = g_active.load(std::memory_order_acquire);
    if (k) return *k;
    std::lock_guard<std::mutex> lock(g_init);
    k = g_active.load(std::memory_order_relaxed);
    if (!k) {
        const char* env = std::getenv("SHELFRANK_FORCE_ISA");
        if (env && *env) {
            try {
                k = find(env);
            } catch (const std::invalid_argument& e) {
                throw std::invalid_argument(std::string("SHELFRANK_FORCE_ISA: ") + e.what());
            }
        } else {
            k = tables().back();
        }
        g_active.store(k, std::memory_order_release);
    }
    return *k;
}

std::string active_isa() { return active_kernels().name; }

void force_isa(const std::string& name) {
    std::lock_guard<std::mutex> lock(g_init);
    g_active.store(name.empty() ? nullptr : find(name), std::memory_order_release);
}

const IsaKernels& kernels_for(const std::string& name) { return *find(name); }

}  // namespace shelfrank
