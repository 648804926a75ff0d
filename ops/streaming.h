// Non-temporal ("streaming") stores for outputs too large to stay in the cache.
//
// An ordinary store first reads the cache line it writes (read-for-ownership), so
// an out-of-cache copy or scale moves three bytes over the memory bus for every
// byte of output: read the input, read the old output, write the new output.
// A non-temporal store writes whole lines without reading them: two bytes. On this
// project's benchmark machine that makes a 64 MB float copy about 1.5x faster
// (docs/native-kernel.md, "Why the kernel fell behind Mul out of cache"). For
// outputs that fit in the cache, ordinary stores are better: the next op reads
// the output from the cache instead of memory.
#pragma once

#include <cstddef>
#include <cstdint>

namespace spatialdrop {

/// Output size (bytes) from which the data pass and the copy use streaming stores.
/// SPATIALDROP_STREAMING_MIN_BYTES overrides it (0: always; the tests use it to
/// cover the streaming path on small tensors). Where the CPU has no streaming
/// stores (not x86-64) it is SIZE_MAX: never.
size_t StreamingMinBytes() noexcept;

/// Copies `bytes` from `from` to `to` (any alignment; the ranges must not overlap)
/// with streaming stores for the 16-byte-aligned part of `to`. Call StreamFence
/// before another thread may read `to`.
void StreamCopy(void* to, const void* from, size_t bytes) noexcept;

/// Orders this thread's streaming stores before its later stores (sfence): the end
/// of a thread-pool task, after which onnxruntime's synchronisation publishes them.
void StreamFence() noexcept;

}  // namespace spatialdrop
