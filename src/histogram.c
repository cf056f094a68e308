/*
 * Latency histograms (histogram.h): 4 buckets per octave of microseconds.
 */
#include "histogram.h"

static int hist_bucket(int64_t us)
{
    if (us < 4)
        return us < 0 ? 0 : (int)us;
    int oct = 63 - __builtin_clzll((unsigned long long)us);
    int idx = oct * 4 + (int)((us >> (oct - 2)) & 3) - 4;
    return idx < SURPOOL__HIST_BUCKETS ? idx : SURPOOL__HIST_BUCKETS - 1;
}

static int64_t hist_upper(int idx)
{
    if (idx < 4)
        return idx;
    int oct = (idx + 4) / 4, frac = (idx + 4) % 4;
    return ((int64_t)(4 + frac + 1) << (oct - 2)) - 1;
}

void surpool__hist_add(surpool__hist *h, int64_t us)
{
    int b = hist_bucket(us);
    if (h->bucket[b] != UINT32_MAX)
        h->bucket[b]++;
    if (us > h->max_us)
        h->max_us = us;
}

int64_t surpool__hist_percentile(const surpool__hist *h, double q)
{
    uint64_t total = 0;
    for (int i = 0; i < SURPOOL__HIST_BUCKETS; i++)
        total += h->bucket[i];
    if (total == 0)
        return 0;
    uint64_t target = (uint64_t)(q * (double)total + 0.999999);
    if (target == 0)
        target = 1;
    uint64_t seen = 0;
    for (int i = 0; i < SURPOOL__HIST_BUCKETS; i++) {
        seen += h->bucket[i];
        if (seen >= target) {
            int64_t up = hist_upper(i);
            return up < h->max_us ? up : h->max_us;
        }
    }
    return h->max_us;
}
