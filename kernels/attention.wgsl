// Flash-style attention: O = softmax(scale * Q K^T [+ causal mask]) V, per (batch, head), with an
// online softmax over key blocks so the Lq x Lk score matrix never exists.
//
// Layout: row-major rows of `*_stride` elements; head h of row i of batch b starts at element
// `*_base + b * *_bstride + i * *_stride + h * D` (heads interleaved in the last dim, as the
// linear projections produce them; a fused QKV projection is read in place via base/stride).
//
// Each invocation owns R query rows (rows lid, lid + WG, ...) with q and the output accumulator in
// registers (straight-line code, generated per (D, R, KB)); every key/value row is read straight from storage at a workgroup-uniform address
// and used by all R rows. On CPU Vulkan (lavapipe) this beats staging tiles in workgroup memory:
// there is no faster memory to stage into, and barriers cost a context switch. All control flow
// is uniform (padding rows clamp their index and only skip the store) so uniform loads stay
// scalar.
//
// Prelude consts: D (head dim, u32), DF = D / 4, TAIL = D % 4, D4 = ceil(D / 4), R (rows per
// invocation), KB (keys per online-softmax block), WG (workgroup size), CAUSAL (bool).
// Arithmetic and accumulation in f32 whatever the storage type T.

// Params, bindings, load_q/k/v, store_o, NEG_BIG, MASKED: kernels/attention_io.wgsl.


// The entry point is appended by src/ops/attention.rs with every loop over head-dim chunks,
// rows and keys of a block written out (see `main_source` there): lavapipe (Mesa 22) counts
// every iteration of every loop an invocation runs against one limit of 65535 and silently
// leaves all loops once it is spent, so only the loop over key blocks may stay a loop.
