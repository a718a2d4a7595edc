/* A reference runtime in C for the streamparity runtime protocol, version 1 (see the README's runtime-protocol section).
 *
 * It serves a toy stateful model whose outputs are trivially computable (toy.contract.json):
 *   outputs[b,d,t]             = audio[b,d,t] + cache_last_time[b,0,d,t] + 0.5 * sum_j cache_last_channel[b,0,j,d]
 *   encoded_lengths[b]         = length[b]
 *   cache_last_channel_next    = the last 6 frames of (cache_last_channel frames, then the chunk's 2 frames)
 *   cache_last_time_next       = the chunk's audio
 *   cache_last_channel_next_len = min(cache_last_channel_len + 2, 6)
 * Build: gcc -O2 -std=c11 -o toy_runtime toy_runtime.c
 * Faults for the suite's own tests: TOY_FAULT=crash@N|hang@N|shape@N|garbage@N|exit@N acts on the N-th
 * (0-based) run or step request of the process.  Only batch 1 is served. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define D 4
#define T 2
#define TC 6
#define STEP 2

typedef struct { char name[64]; int64_t shape[8]; int rank; long nbytes; const unsigned char *data; } Tensor;

static float cache_ch[TC * D], cache_tm[D * T];
static int64_t cache_len;
static int stream_open;
static long calls;
static char fault[16];
static long fault_at = -1;

static void read_exact(void *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t k = read(0, (char *)buf + got, n - got);
        if (k <= 0) exit(got == 0 && n > 0 ? 0 : 3);
        got += (size_t)k;
    }
}

static void write_all(const void *buf, size_t n) {
    size_t done = 0;
    while (done < n) {
        ssize_t k = write(1, (const char *)buf + done, n - done);
        if (k <= 0) exit(4);
        done += (size_t)k;
    }
}

/* find "key": in the header (from p) and return a pointer just after the colon */
static const char *after_key(const char *p, const char *key) {
    char pat[80];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *q = strstr(p, pat);
    return q ? q + strlen(pat) : NULL;
}

static int parse_tensors(const char *header, const unsigned char *payload, Tensor *ts, int max) {
    const char *p = after_key(header, "tensors");
    int n = 0;
    long off = 0;
    if (!p) return 0;
    while (n < max) {
        const char *q = after_key(p, "name");
        const char *end = strchr(p, ']');
        if (!q) break;
        if (*p == '[' && p[1] == ']') break;
        (void)end;
        Tensor *t = &ts[n];
        q++; /* opening quote */
        size_t len = strcspn(q, "\"");
        if (len >= sizeof t->name) len = sizeof t->name - 1;
        memcpy(t->name, q, len);
        t->name[len] = 0;
        const char *s = after_key(q, "shape") + 1;
        t->rank = 0;
        while (*s != ']' && t->rank < 8) {
            t->shape[t->rank++] = strtoll(s, (char **)&s, 10);
            if (*s == ',') s++;
        }
        t->nbytes = strtol(after_key(s, "nbytes"), NULL, 10);
        t->data = payload + off;
        off += t->nbytes;
        p = s;
        n++;
    }
    return n;
}

static const Tensor *find(const Tensor *ts, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (strcmp(ts[i].name, name) == 0) return &ts[i];
    return NULL;
}

typedef struct { const char *name; const char *dtype; int64_t shape[4]; int rank; const void *data; long nbytes; } Out;

static void reply(const char *extra, const Out *outs, int n) {
    char head[4096];
    int k = snprintf(head, sizeof head, "{\"ok\":true%s,\"tensors\":[", extra);
    long total = 0;
    for (int i = 0; i < n; i++) {
        k += snprintf(head + k, sizeof head - k, "%s{\"name\":\"%s\",\"dtype\":\"%s\",\"shape\":[", i ? "," : "",
                      outs[i].name, outs[i].dtype);
        for (int r = 0; r < outs[i].rank; r++)
            k += snprintf(head + k, sizeof head - k, "%s%lld", r ? "," : "", (long long)outs[i].shape[r]);
        k += snprintf(head + k, sizeof head - k, "],\"nbytes\":%ld}", outs[i].nbytes);
        total += outs[i].nbytes;
    }
    k += snprintf(head + k, sizeof head - k, "],\"payload_bytes\":%ld}", total);
    uint32_t len = (uint32_t)k; /* little-endian hosts only, as the protocol's byte order */
    write_all("SPRT", 4);
    write_all(&len, 4);
    write_all(head, (size_t)k);
    for (int i = 0; i < n; i++) write_all(outs[i].data, (size_t)outs[i].nbytes);
}

static void error_reply(const char *msg) {
    char head[1024];
    int k = snprintf(head, sizeof head, "{\"ok\":false,\"error\":\"%s\",\"tensors\":[],\"payload_bytes\":0}", msg);
    uint32_t len = (uint32_t)k;
    write_all("SPRT", 4);
    write_all(&len, 4);
    write_all(head, (size_t)k);
}

/* one chunk of the toy model: caches in/out in place */
static void toy(const float *audio, float *ch, float *tm, int64_t *len, float *out) {
    for (int d = 0; d < D; d++) {
        float s = 0.f;
        for (int j = 0; j < TC; j++) s += ch[j * D + d];
        for (int t = 0; t < T; t++) out[d * T + t] = audio[d * T + t] + tm[d * T + t] + 0.5f * s;
    }
    memmove(ch, ch + STEP * D, (size_t)(TC - STEP) * D * sizeof(float));
    for (int t = 0; t < T; t++)
        for (int d = 0; d < D; d++) ch[(TC - STEP + t) * D + d] = audio[d * T + t];
    memcpy(tm, audio, sizeof(float) * D * T);
    *len = *len + STEP > TC ? TC : *len + STEP;
}

static int inject(void) {
    long n = calls++;
    if (n != fault_at) return 0;
    if (!strcmp(fault, "crash")) { fprintf(stderr, "toy_runtime: crashing on request %ld\n", n); fflush(stderr); raise(SIGSEGV); }
    if (!strcmp(fault, "exit")) { fprintf(stderr, "toy_runtime: exiting on request %ld\n", n); exit(7); }
    if (!strcmp(fault, "hang")) { fprintf(stderr, "toy_runtime: hanging on request %ld\n", n); fflush(stderr); for (;;) pause(); }
    if (!strcmp(fault, "garbage")) { write_all("hello, I am a log line\n", 23); return 0; }
    return !strcmp(fault, "shape");
}

static void outputs(const float *out, const int64_t *enc, const float *ch, const float *tm, const int64_t *len,
                    const int64_t *len_in, int bad_shape) {
    Out o[6] = {
        {"outputs", "float32", {1, D, bad_shape ? T + 1 : T}, 3, out, (long)sizeof(float) * D * T},
        {"encoded_lengths", "int64", {1}, 1, enc, 8},
        {"cache_last_channel_next", "float32", {1, 1, TC, D}, 4, ch, (long)sizeof(float) * TC * D},
        {"cache_last_time_next", "float32", {1, 1, D, T}, 4, tm, (long)sizeof(float) * D * T},
        {"cache_last_channel_next_len", "int64", {1}, 1, len, 8},
        {"cache_last_channel_len", "int64", {1}, 1, len_in, 8},
    };
    if (bad_shape) o[0].nbytes = (long)sizeof(float) * D * (T + 1);
    static float big[D * (T + 1)];
    if (bad_shape) { memcpy(big, out, sizeof(float) * D * T); o[0].data = big; }
    reply("", o, len_in ? 6 : 5);
}

int main(void) {
    const char *f = getenv("TOY_FAULT");
    if (f && strchr(f, '@')) {
        size_t k = (size_t)(strchr(f, '@') - f);
        if (k < sizeof fault) { memcpy(fault, f, k); fault[k] = 0; fault_at = atol(strchr(f, '@') + 1); }
    }
    for (;;) {
        unsigned char prefix[8];
        uint32_t hlen;
        read_exact(prefix, 8);
        if (memcmp(prefix, "SPRT", 4) != 0) { fprintf(stderr, "toy_runtime: bad frame magic\n"); return 3; }
        memcpy(&hlen, prefix + 4, 4);
        char *header = malloc(hlen + 1);
        read_exact(header, hlen);
        header[hlen] = 0;
        const char *pb = after_key(header, "payload_bytes");
        long plen = pb ? strtol(pb, NULL, 10) : 0;
        unsigned char *payload = malloc(plen > 0 ? (size_t)plen : 1);
        read_exact(payload, (size_t)plen);
        Tensor ts[16];
        int n = parse_tensors(header, payload, ts, 16);
        const char *op = after_key(header, "op");
        char opname[16] = "";
        if (op) sscanf(op, "\"%15[a-z]\"", opname);
        if (!strcmp(opname, "describe")) {
            const char *v = after_key(header, "protocol");
            if (!v || atol(v) != 1) error_reply("protocol version mismatch: this runtime speaks 1");
            else reply(",\"protocol\":1,\"name\":\"toy_runtime.c\",\"version\":\"1.0\",\"precision\":\"fp32\","
                       "\"device\":\"cpu\",\"info\":{\"model\":\"toy: out = in + cache\"}", NULL, 0);
        } else if (!strcmp(opname, "run")) {
            const Tensor *a = find(ts, n, "audio_signal"), *c = find(ts, n, "cache_last_channel"),
                         *t = find(ts, n, "cache_last_time"), *l = find(ts, n, "cache_last_channel_len"),
                         *ln = find(ts, n, "length");
            if (!a || !c || !t || !l || !ln || a->nbytes != (long)sizeof(float) * D * T) {
                error_reply("run needs audio_signal [1,4,2], length, cache_last_channel, cache_last_time, cache_last_channel_len");
            } else {
                int bad = inject();
                float ch[TC * D], tm[D * T], out[D * T];
                int64_t len, enc;
                memcpy(ch, c->data, sizeof ch); memcpy(tm, t->data, sizeof tm); memcpy(&len, l->data, 8);
                memcpy(&enc, ln->data, 8);
                toy((const float *)a->data, ch, tm, &len, out);
                outputs(out, &enc, ch, tm, &len, NULL, bad);
            }
        } else if (!strcmp(opname, "open")) {
            const Tensor *c = find(ts, n, "cache_last_channel"), *t = find(ts, n, "cache_last_time"),
                         *l = find(ts, n, "cache_last_channel_len");
            if (!c || !t || !l) error_reply("open needs the three cache inputs");
            else {
                memcpy(cache_ch, c->data, sizeof cache_ch); memcpy(cache_tm, t->data, sizeof cache_tm);
                memcpy(&cache_len, l->data, 8);
                stream_open = 1;
                reply(",\"stream\":1", NULL, 0);
            }
        } else if (!strcmp(opname, "step")) {
            const Tensor *a = find(ts, n, "audio_signal"), *ln = find(ts, n, "length");
            if (!stream_open) error_reply("no open stream");
            else if (!a || !ln) error_reply("step needs audio_signal and length");
            else {
                int bad = inject();
                float out[D * T];
                int64_t len_in = cache_len, enc;
                memcpy(&enc, ln->data, 8);
                toy((const float *)a->data, cache_ch, cache_tm, &cache_len, out);
                outputs(out, &enc, cache_ch, cache_tm, &cache_len, &len_in, bad);
            }
        } else if (!strcmp(opname, "state")) {
            Out o[3] = {{"cache_last_channel", "float32", {1, 1, TC, D}, 4, cache_ch, (long)sizeof cache_ch},
                        {"cache_last_time", "float32", {1, 1, D, T}, 4, cache_tm, (long)sizeof cache_tm},
                        {"cache_last_channel_len", "int64", {1}, 1, &cache_len, 8}};
            if (!stream_open) error_reply("no open stream"); else reply("", o, 3);
        } else if (!strcmp(opname, "close")) {
            stream_open = 0;
            reply("", NULL, 0);
        } else if (!strcmp(opname, "shutdown")) {
            reply("", NULL, 0);
            return 0;
        } else {
            error_reply("unknown operation");
        }
        free(header);
        free(payload);
    }
}
