// A simulated noisy neighbour for the load benchmark (docs/serving.md, "Load"): copies 64 MiB
// buffers (memory bandwidth and CPU) for BUSY ms out of every 100 ms, until killed. One per core:
//
//     gcc -O2 -o /tmp/noisy_neighbour scripts/serve/noisy_neighbour.c
//     /tmp/noisy_neighbour 25 & /tmp/noisy_neighbour 25 &
//     cargo run --release -p ember-serve --example load -- --model DIR --clients 1,32 ...
//     kill %1 %2
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
    int busy = argc > 1 ? atoi(argv[1]) : 25;
    if (busy < 1 || busy > 100) return 2;
    size_t n = (size_t)64 << 20;
    char *a = malloc(n), *b = malloc(n);
    if (!a || !b) return 1;
    memset(a, 1, n);
    memset(b, 2, n);
    for (;;) {
        double start = now_ms();
        while (now_ms() - start < busy) {
            memcpy(b, a, n / 8);
            memcpy(a, b, n / 8);
        }
        if (busy < 100) usleep((useconds_t)(100 - busy) * 1000);
    }
}
