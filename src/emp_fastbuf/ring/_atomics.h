/* Memory-ordering helpers for the shared-memory ring.
 *
 * The ring is shared between processes through mmap, so ordinary C11 atomics on
 * plain uint64_t words are used (GCC/Clang __atomic builtins, lock-free for 8-byte
 * aligned words on x86-64 and arm64). Producers publish a record by a release-store of
 * their lane head after copying it; the consumer acquire-loads the head before reading.
 * The consumer frees space by a release-store of the lane tail, which the producer
 * acquire-loads before reusing it.
 */
#ifndef EMP_FASTBUF_ATOMICS_H
#define EMP_FASTBUF_ATOMICS_H

#include <stdint.h>
#include <string.h>
#include <pthread.h>

/* The ring layout and the record format are little-endian and the native code writes
 * integers in the machine's order: refuse to build where those differ. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "emp-fastbuf's shared-memory and record formats are little-endian only"
#endif

#if defined(__GNUC__) || defined(__clang__)
#define EFB_LIKELY(x) __builtin_expect(!!(x), 1)
#define EFB_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define EFB_LIKELY(x) (x)
#define EFB_UNLIKELY(x) (x)
#endif

static inline uint64_t efb_load_acquire(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline uint64_t efb_load_relaxed(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}
static inline void efb_store_release(uint64_t *p, uint64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
static inline void efb_store_relaxed(uint64_t *p, uint64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}
/* Returns 1 when *p was `expected` and is now `desired`. */
static inline int efb_cas(uint64_t *p, uint64_t expected, uint64_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0,
                                       __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}
static inline uint64_t efb_fetch_add(uint64_t *p, uint64_t v) {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
/* Single-writer counter bump: only the lane owner writes it, readers may race. */
static inline void efb_bump(uint64_t *p, uint64_t v) {
    __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + v, __ATOMIC_RELAXED);
}

static inline uint32_t efb_get_u32(const char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline void efb_put_u32(char *p, uint32_t v) { memcpy(p, &v, 4); }

/* Fork detection that works for forks made from C too (uWSGI never runs
 * os.register_at_fork hooks): the child bumps a generation counter that every Ring
 * compares with the one it saw when it claimed its lane. Each extension module gets its
 * own copy of these statics: only _ring registers the handler, and other modules read
 * the counter through _ring's fork_generation(). */
static volatile uint64_t efb_fork_generation = 0;
static void efb_atfork_child(void) { efb_fork_generation++; }
static int efb_atfork_registered = 0;
static inline int efb_register_atfork(void) {
    if (efb_atfork_registered) return 0;
    efb_atfork_registered = 1;
    return pthread_atfork(NULL, NULL, efb_atfork_child);
}
static inline uint64_t efb_fork_gen(void) { return efb_fork_generation; }

#endif
