// ---- hand-written source backends/templates/cpu_buffers.cpp (no template slots) ----
// The cpu kernel's large outputs (reclang/runtime/cpu_buffers.py), kept mapped between
// calls. A large tensor torch allocates is mapped anew each time and the OS maps its pages
// on the first write: on the 2-core machines of issue 25 that costs more than the scans'
// own work (a copy into a fresh tensor 4.4 GB/s, into one in huge pages 14.2, into an
// existing one 26.2; docs/benchmarks.md). Here a buffer whose tensor torch frees goes back
// to a free list, by size, up to a limit of bytes kept; a request of that size takes it
// again, its pages already mapped. Buffers are handed to torch as DLPack tensors
// (torch.from_dlpack), whose deleter is `give_back`; the contents of a buffer taken are
// undefined, as torch.empty's.
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#ifdef __linux__
#include <sys/mman.h>
#endif

namespace {

// DLPack's structs (dlpack.h, v0.8): only their layout matters
struct DLDevice { int32_t device_type, device_id; };
struct DLDataType { uint8_t code, bits; uint16_t lanes; };
struct DLTensor {
    void* data;
    DLDevice device;
    int32_t ndim;
    DLDataType dtype;
    int64_t *shape, *strides;
    uint64_t byte_offset;
};
struct DLManagedTensor {
    DLTensor dl_tensor;
    void* manager_ctx;
    void (*deleter)(DLManagedTensor*);
};

constexpr int kMaxDims = 8;
constexpr size_t kHuge = size_t(2) << 20;  // Linux's huge page: buffers are whole ones

struct Buffer {
    DLManagedTensor managed;
    int64_t shape[kMaxDims], strides[kMaxDims];
    size_t bytes;
};

std::mutex lock;
std::multimap<size_t, void*> free_list;  // bytes -> a buffer's memory
size_t kept = 0, limit = 0;              // the bytes on the free list, and their limit

void* fresh(size_t bytes) {
    void* p = std::aligned_alloc(kHuge, bytes);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (p) madvise(p, bytes, MADV_HUGEPAGE);  // a hint: ignored where THP is "never"
#endif
    return p;
}

void give_back(DLManagedTensor* managed) {
    Buffer* b = static_cast<Buffer*>(managed->manager_ctx);
    {
        std::lock_guard<std::mutex> hold(lock);
        if (kept + b->bytes <= limit) {
            free_list.emplace(b->bytes, managed->dl_tensor.data);
            kept += b->bytes;
            managed->dl_tensor.data = nullptr;
        }
    }
    std::free(managed->dl_tensor.data);  // past the limit (nullptr: kept)
    delete b;
}

}  // namespace

extern "C" {

// The limit of bytes the free list keeps (0: none; buffers are freed with their tensor).
void set_limit(int64_t bytes) {
    std::lock_guard<std::mutex> hold(lock);
    limit = bytes > 0 ? size_t(bytes) : 0;
    while (kept > limit) {
        auto last = std::prev(free_list.end());
        kept -= last->first;
        std::free(last->second);
        free_list.erase(last);
    }
}

// The bytes on the free list now.
int64_t kept_bytes() {
    std::lock_guard<std::mutex> hold(lock);
    return int64_t(kept);
}

// A contiguous tensor of `ndim` sizes `shape` and `bits` (32 or 64) float elements, for
// torch.from_dlpack; nullptr when the memory cannot be had.
DLManagedTensor* take(int32_t ndim, const int64_t* shape, int32_t bits) {
    if (ndim < 1 || ndim > kMaxDims) return nullptr;
    Buffer* b = new Buffer();
    int64_t n = 1;
    for (int32_t i = ndim - 1; i >= 0; --i) {
        b->shape[i] = shape[i];
        b->strides[i] = n;
        n *= shape[i];
    }
    b->bytes = (size_t(n) * size_t(bits / 8) + kHuge - 1) / kHuge * kHuge;
    void* data = nullptr;
    {
        std::lock_guard<std::mutex> hold(lock);
        auto it = free_list.find(b->bytes);
        if (it != free_list.end()) {
            data = it->second;
            kept -= it->first;
            free_list.erase(it);
        }
    }
    if (!data) data = fresh(b->bytes);
    if (!data) {
        delete b;
        return nullptr;
    }
    b->managed.dl_tensor = {data, {1, 0}, ndim, {2, uint8_t(bits), 1}, b->shape, b->strides, 0};
    b->managed.manager_ctx = b;  // kDLCPU = 1, kDLFloat = 2 above
    b->managed.deleter = give_back;
    return &b->managed;
}

}  // extern "C"
