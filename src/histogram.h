/*
 * Latency histograms: fixed buckets, no allocation on the hot path. The
 * owner's mutex guards each one (the pool's, for acquire waits and connects).
 * Not installed.
 */
#ifndef SURPOOL_HISTOGRAM_H
#define SURPOOL_HISTOGRAM_H

#include <stdint.h>

#define SURPOOL__HIST_BUCKETS 160 /* 4 per octave of microseconds: 1 us .. ~2^40 us */

typedef struct surpool__hist {
    uint32_t bucket[SURPOOL__HIST_BUCKETS];
    int64_t max_us;
} surpool__hist;

/* Count one sample of `us` microseconds. */
void surpool__hist_add(surpool__hist *h, int64_t us);

/* The q-th quantile (0 < q <= 1) as the upper edge of its bucket, never more
 * than the largest sample; 0 when empty. */
int64_t surpool__hist_percentile(const surpool__hist *h, double q);

#endif
