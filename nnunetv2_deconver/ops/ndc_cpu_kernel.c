/* The NDC update at inference on the CPU, fused: fp32, channels-last, one observed channel per group.
 *
 * Maps are (B, D, H, W, channels) in memory (channels-last; 2D maps have D = 1). The observed h and K(S)
 * have C channels; the source S and the output E = R * C channels in ratio-major order: entry r * C + c
 * is source r of observed channel c (the caller permutes the 1x1 convolutions around the update to match,
 * which is exact). Both operators are correlations, out(v) = sum_o in(v + o) w(o) over the kernel's
 * offsets o with zero padding k // 2: K with V, the adjoint A with V flipped (A(y)(u) = sum_o y(u - o) V(o)).
 * The caller passes both weight tables as [tap][r * C + c], tap = (dz * kh + dy) * kw + dx.
 *
 *   ndc_correlate: K(S)(v)_c = sum_r sum_o S(v + o)_{rC+c} V_{c,r}(o)               (pass 1, rows [r0, r1))
 *   ndc_update:    out(v)_e = S(v)_e (A(h)(v)_e + eps) / (A(K(S))(v)_e + eps)      (pass 2, rows [r0, r1))
 *
 * A row is one (b, z, y). Pass 2 reads K(S) of neighbouring rows, so pass 1 finishes on every row first.
 * Each R*C-channel map is read once and written once; A(h) and A(K(S)) exist only in registers. Channels
 * run in blocks of BLOCK, whose accumulators stay in vector registers; the last C % BLOCK channels run
 * one at a time.
 */
#include <stdint.h>

#define LANES 8
#define VECTORS 4
#define BLOCK (LANES * VECTORS)

/* LANES floats; unaligned loads and stores */
typedef float vec __attribute__((vector_size(LANES * sizeof(float)), aligned(sizeof(float)), may_alias));

typedef struct {
    int64_t batch, depth, height, width, channels, ratio, kd, kh, kw;
} Shape;

static Shape shape_of(const int64_t *dims) {
    const Shape s = {dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6], dims[7], dims[8]};
    return s;
}

/* The kernel rows (dz, dy) that reach row (b, z, y) inside the map: offsets of their first voxel and taps. */
typedef struct {
    int64_t count, voxel[64], tap[64];
} Rows;

static int rows_of(const Shape *s, int64_t row, Rows *rows) {
    const int64_t y = row % s->height, z = (row / s->height) % s->depth, b = row / (s->height * s->depth);
    rows->count = 0;
    for (int64_t dz = 0; dz < s->kd; ++dz) {
        const int64_t zz = z + dz - s->kd / 2;
        if (zz < 0 || zz >= s->depth) continue;
        for (int64_t dy = 0; dy < s->kh; ++dy) {
            const int64_t yy = y + dy - s->kh / 2;
            if (yy < 0 || yy >= s->height) continue;
            if (rows->count == 64) return 1;
            rows->voxel[rows->count] = ((b * s->depth + zz) * s->height + yy) * s->width;
            rows->tap[rows->count++] = (dz * s->kh + dy) * s->kw;
        }
    }
    return 0;
}

/* the taps dx of a kernel row that land inside a row of ``width`` voxels for output voxel x: [*lo, *hi) */
static inline void taps_inside(const Shape *s, int64_t x, int64_t *lo, int64_t *hi) {
    const int64_t pad = s->kw / 2;
    *lo = pad > x ? pad - x : 0;
    *hi = s->kw < s->width + pad - x ? s->kw : s->width + pad - x;
}

int ndc_correlate(const float *source, const float *weights, float *reconstruction, const int64_t *dims,
                  int64_t row_begin, int64_t row_end) {
    const Shape s = shape_of(dims);
    const int64_t C = s.channels, E = s.ratio * C, full = C - C % BLOCK, pad = s.kw / 2;
    Rows rows;
    for (int64_t row = row_begin; row < row_end; ++row) {
        if (rows_of(&s, row, &rows)) return 1;
        for (int64_t x = 0; x < s.width; ++x) {
            int64_t lo, hi;
            taps_inside(&s, x, &lo, &hi);
            float *out = reconstruction + (row * s.width + x) * C;
            for (int64_t c0 = 0; c0 < full; c0 += BLOCK) {
                vec acc[VECTORS] = {0};
                for (int64_t i = 0; i < rows.count; ++i)
                    for (int64_t dx = lo; dx < hi; ++dx) {
                        const float *in = source + (rows.voxel[i] + x + dx - pad) * E + c0;
                        const float *w = weights + (rows.tap[i] + dx) * E + c0;
                        for (int64_t r = 0; r < s.ratio; ++r)
                            for (int v = 0; v < VECTORS; ++v)
                                acc[v] += *(const vec *)(in + r * C + v * LANES) * *(const vec *)(w + r * C + v * LANES);
                    }
                for (int v = 0; v < VECTORS; ++v) *(vec *)(out + c0 + v * LANES) = acc[v];
            }
            for (int64_t c = full; c < C; ++c) {
                float acc = 0.f;
                for (int64_t i = 0; i < rows.count; ++i)
                    for (int64_t dx = lo; dx < hi; ++dx) {
                        const float *in = source + (rows.voxel[i] + x + dx - pad) * E + c;
                        const float *w = weights + (rows.tap[i] + dx) * E + c;
                        for (int64_t r = 0; r < s.ratio; ++r) acc += in[r * C] * w[r * C];
                    }
                out[c] = acc;
            }
        }
    }
    return 0;
}

int ndc_update(const float *observed, const float *reconstruction, const float *source, const float *weights,
               float *output, float eps, const int64_t *dims, int64_t row_begin, int64_t row_end) {
    const Shape s = shape_of(dims);
    const int64_t C = s.channels, E = s.ratio * C, full = C - C % BLOCK, pad = s.kw / 2;
    Rows rows;
    for (int64_t row = row_begin; row < row_end; ++row) {
        if (rows_of(&s, row, &rows)) return 1;
        for (int64_t x = 0; x < s.width; ++x) {
            int64_t lo, hi;
            taps_inside(&s, x, &lo, &hi);
            const int64_t at = (row * s.width + x) * E;
            for (int64_t r = 0; r < s.ratio; ++r) {
                for (int64_t c0 = 0; c0 < full; c0 += BLOCK) {
                    vec num[VECTORS] = {0}, den[VECTORS] = {0};
                    for (int64_t i = 0; i < rows.count; ++i)
                        for (int64_t dx = lo; dx < hi; ++dx) {
                            const int64_t voxel = rows.voxel[i] + x + dx - pad;
                            const float *h = observed + voxel * C + c0, *k = reconstruction + voxel * C + c0;
                            const float *w = weights + (rows.tap[i] + dx) * E + r * C + c0;
                            for (int v = 0; v < VECTORS; ++v) {
                                const vec wv = *(const vec *)(w + v * LANES);
                                num[v] += *(const vec *)(h + v * LANES) * wv;
                                den[v] += *(const vec *)(k + v * LANES) * wv;
                            }
                        }
                    const float *src = source + at + r * C + c0;
                    float *out = output + at + r * C + c0;
                    for (int v = 0; v < VECTORS; ++v)
                        *(vec *)(out + v * LANES) = *(const vec *)(src + v * LANES) * (num[v] + eps) / (den[v] + eps);
                }
                for (int64_t c = full; c < C; ++c) {
                    float num = 0.f, den = 0.f;
                    for (int64_t i = 0; i < rows.count; ++i)
                        for (int64_t dx = lo; dx < hi; ++dx) {
                            const int64_t voxel = rows.voxel[i] + x + dx - pad;
                            const float w = weights[(rows.tap[i] + dx) * E + r * C + c];
                            num += observed[voxel * C + c] * w;
                            den += reconstruction[voxel * C + c] * w;
                        }
                    output[at + r * C + c] = source[at + r * C + c] * (num + eps) / (den + eps);
                }
            }
        }
    }
    return 0;
}
