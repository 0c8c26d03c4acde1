//! A random generator that reproduces `torch.Generator("cpu").manual_seed(seed)` followed by
//! `torch.randn(shape, generator=g)` (float32) bit for bit, so Pigment's initial latents and
//! Euler-ancestral / DDIM-eta noise match diffusers run on CPU with the same seed.
//!
//! What torch does (ATen, CPU):
//!
//! * The engine is a standard 32-bit MT19937 (`at::mt19937`), seeded with `seed & 0xffffffff`
//!   by the usual `1812433253` recurrence; `manual_seed` also drops the cached normals.
//! * A float uniform in `[0, 1)` takes one 32-bit draw: `(x & (2^24 - 1)) * 2^-24`; a double
//!   one takes two draws combined as `hi << 32 | lo` and keeps 53 bits.
//! * `normal_` on a contiguous float tensor with at least 16 elements first fills the whole
//!   buffer with float uniforms, then turns each block of 16 into normals with Box-Muller:
//!   `u1 = 1 - data[j]`, `u2 = data[j + 8]` for `j < 8`, `data[j] = r cos θ`,
//!   `data[j + 8] = r sin θ`, `r = sqrt(-2 ln u1)`, `θ = 2π u2`. If the length is not a
//!   multiple of 16, the last 16 slots are refilled with fresh uniforms and transformed again
//!   (they overlap the previous block). On x86-64 builds (the AVX2 kernel, which torch also
//!   uses on AVX-512 machines because `normal_stub` has no AVX-512 dispatch) `ln`, `sin` and
//!   `cos` are the Cephes-style polynomials of `avx_mathfun.h`, evaluated in float; we
//!   evaluate the same operations in the same order in scalar f32, with the FMAs GCC forms
//!   ([`NormalPath::Avx2`]).
//!   Other builds (e.g. aarch64) use the C library's `logf/cosf/sinf` ([`NormalPath::Libm`],
//!   best effort: the platform libm is not pinned down).
//! * Fewer than 16 elements take the scalar path: `at::normal_distribution<double>`, which
//!   draws two double uniforms, returns `r cos θ` (with `r = sqrt(-2 log1p(-u2))`,
//!   `θ = 2π u1`) and caches `r sin θ` in the generator for the next scalar normal.

/// Which Box-Muller kernel torch was built with (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NormalPath {
    /// x86-64 torch (AVX2 kernel with the `avx_mathfun.h` polynomials): the default.
    #[default]
    Avx2,
    /// The portable kernel (`std::log/cos/sin` in float), e.g. torch on aarch64.
    Libm,
}

const MT_N: usize = 624;
const MT_M: usize = 397;

/// The 32-bit Mersenne twister, as `at::mt19937` / `std::mt19937`.
#[derive(Clone)]
struct Mt19937 {
    state: [u32; MT_N],
    next: usize,
}

impl Mt19937 {
    fn new(seed: u64) -> Self {
        let mut state = [0u32; MT_N];
        state[0] = (seed & 0xffff_ffff) as u32;
        for j in 1..MT_N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(j as u32);
        }
        Mt19937 { state, next: MT_N }
    }

    fn twist(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        for i in 0..MT_N {
            let y = (self.state[i] & UPPER) | (self.state[(i + 1) % MT_N] & LOWER);
            let mag = if y & 1 != 0 { MATRIX_A } else { 0 };
            self.state[i] = self.state[(i + MT_M) % MT_N] ^ (y >> 1) ^ mag;
        }
        self.next = 0;
    }

    fn next_u32(&mut self) -> u32 {
        if self.next >= MT_N {
            self.twist();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }
}

/// `torch.Generator("cpu")` after `manual_seed(seed)`.
#[derive(Clone)]
pub struct TorchRng {
    mt: Mt19937,
    seed: u64,
    next_double_normal: Option<f64>,
    path: NormalPath,
}

impl std::fmt::Debug for TorchRng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchRng").field("seed", &self.seed).field("path", &self.path).finish_non_exhaustive()
    }
}

impl TorchRng {
    /// `torch.Generator("cpu").manual_seed(seed)`, normals as x86-64 torch makes them.
    pub fn new(seed: u64) -> Self {
        Self::with_path(seed, NormalPath::default())
    }

    /// Like [`TorchRng::new`] with an explicit Box-Muller kernel.
    pub fn with_path(seed: u64, path: NormalPath) -> Self {
        TorchRng { mt: Mt19937::new(seed), seed, next_double_normal: None, path }
    }

    /// The seed this generator was created with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// One raw 32-bit engine output (`generator.random()`).
    pub fn next_u32(&mut self) -> u32 {
        self.mt.next_u32()
    }

    /// Two engine outputs combined high-first (`generator.random64()`).
    pub fn next_u64(&mut self) -> u64 {
        let hi = self.mt.next_u32() as u64;
        let lo = self.mt.next_u32() as u64;
        (hi << 32) | lo
    }

    /// `torch.randint(high, (1,), generator=g)` (int64, CPU): torch's `random_from_to` takes one
    /// 32-bit engine output modulo the range below 2^32, one 64-bit one above.
    pub fn randint(&mut self, high: u64) -> u64 {
        assert!(high > 0, "randint: high must be positive");
        if high < 1 << 32 {
            self.next_u32() as u64 % high
        } else {
            self.next_u64() % high
        }
    }

    /// `at::uniform_real_distribution<float>(0, 1)`: 24 random bits.
    pub fn uniform_f32(&mut self) -> f32 {
        let v = self.next_u32() & ((1u32 << 24) - 1);
        v as f32 * (1.0f32 / (1u32 << 24) as f32)
    }

    /// `at::uniform_real_distribution<double>(0, 1)`: 53 random bits.
    pub fn uniform_f64(&mut self) -> f64 {
        let v = self.next_u64() & ((1u64 << 53) - 1);
        v as f64 * (1.0f64 / (1u64 << 53) as f64)
    }

    /// `at::normal_distribution<double>(0, 1)` (the scalar path, with the cached second value).
    pub fn normal_f64(&mut self) -> f64 {
        if let Some(v) = self.next_double_normal.take() {
            return v;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0f64 * (-u2).ln_1p()).sqrt();
        let theta = 2.0f64 * std::f64::consts::PI * u1;
        self.next_double_normal = Some(r * theta.sin());
        r * theta.cos()
    }

    /// `torch.randn(n, generator=g)` in float32 for a contiguous tensor of `n` elements
    /// (the shape does not matter, only the element count).
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        let mut data = vec![0f32; n];
        self.fill_randn(&mut data);
        data
    }

    /// Fills `data` as `torch.randn` fills a contiguous float tensor of that length.
    pub fn fill_randn(&mut self, data: &mut [f32]) {
        let n = data.len();
        if n < 16 {
            for x in data.iter_mut() {
                *x = self.normal_f64() as f32;
            }
            return;
        }
        for x in data.iter_mut() {
            *x = self.uniform_f32();
        }
        let mut i = 0;
        while i + 16 <= n {
            self.box_muller_16(&mut data[i..i + 16]);
            i += 16;
        }
        if !n.is_multiple_of(16) {
            let tail = &mut data[n - 16..];
            for x in tail.iter_mut() {
                *x = self.uniform_f32();
            }
            self.box_muller_16(tail);
        }
    }

    fn box_muller_16(&self, d: &mut [f32]) {
        match self.path {
            NormalPath::Avx2 => {
                for j in 0..8 {
                    let u1 = 1.0f32 - d[j];
                    let u2 = d[j + 8];
                    let radius = (-2.0f32 * cephes_logf(u1)).sqrt();
                    let two_pi = (2.0f64 * std::f64::consts::PI) as f32;
                    let theta = two_pi * u2;
                    let (s, c) = cephes_sincosf(theta);
                    d[j] = radius * c;
                    d[j + 8] = radius * s;
                }
            }
            NormalPath::Libm => {
                for j in 0..8 {
                    let u1 = 1.0f32 - d[j];
                    let u2 = d[j + 8];
                    let radius = (-2.0f32 * u1.ln()).sqrt();
                    let theta = (2.0f64 * std::f64::consts::PI * u2 as f64) as f32;
                    d[j] = radius * theta.cos();
                    d[j + 8] = radius * theta.sin();
                }
            }
        }
    }
}

/// `log256_ps` from `avx_mathfun.h` for one lane (Cephes `logf`), with every `a*b + c` fused
/// (see [`cephes_sincosf`]). Only meaningful for `x > 0` (Box-Muller passes `(0, 1]`).
#[allow(clippy::excessive_precision)] // Cephes' constants, as avx_mathfun.h spells them
fn cephes_logf(x: f32) -> f32 {
    const SQRTHF: f32 = std::f32::consts::FRAC_1_SQRT_2; // Cephes SQRTHF
    const P: [f32; 9] = [
        7.037_683_629_2E-2,
        -1.151_461_031_0E-1,
        1.167_699_874_0E-1,
        -1.242_014_084_6E-1,
        1.424_932_278_7E-1,
        -1.666_805_766_5E-1,
        2.000_071_476_5E-1,
        -2.499_999_399_3E-1,
        3.333_333_117_4E-1,
    ];
    const Q1: f32 = -2.121_944_40e-4;
    const Q2: f32 = 0.693_359_375;
    if x <= 0.0 || x.is_nan() {
        return f32::NAN;
    }
    let x = x.max(f32::from_bits(0x0080_0000));
    let bits = x.to_bits();
    let imm0 = (bits >> 23) as i32 - 0x7f;
    let mut x = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    let mut e = imm0 as f32 + 1.0;
    let lt = x < SQRTHF;
    let tmp = if lt { x } else { 0.0 };
    x -= 1.0;
    e -= if lt { 1.0 } else { 0.0 };
    x += tmp;
    let z = x * x;
    let mut y = P[0];
    for &p in &P[1..] {
        y = y.mul_add(x, p);
    }
    y *= x;
    y *= z;
    y = e.mul_add(Q1, y);
    y = (-z).mul_add(0.5, y);
    x += y;
    x = e.mul_add(Q2, x);
    x
}

/// `sincos256_ps` from `avx_mathfun.h` for one lane: `(sin x, cos x)`.
///
/// torch's AVX2 kernels are compiled by GCC with `-mfma` and its default
/// `-ffp-contract=fast`, and the intrinsics are plain vector arithmetic, so every
/// multiply-then-add pair in these polynomials becomes one FMA. Checked against torch's output:
/// with separate multiply and add, 4 of the first 256 normals from seed 42 come out 1 ulp off
/// (the `y2 * x + x` of the sine polynomial decides them); fused, all 1280 golden values match.
#[allow(clippy::excessive_precision)]
fn cephes_sincosf(x: f32) -> (f32, f32) {
    const FOPI: f32 = 1.273_239_544_735_16;
    const DP1: f32 = -0.785_156_25;
    const DP2: f32 = -2.418_756_484_985_351_562_5e-4;
    const DP3: f32 = -3.774_894_977_445_941_08e-8;
    const SINCOF: [f32; 3] = [-1.951_529_589_1E-4, 8.332_160_873_6E-3, -1.666_665_461_1E-1];
    const COSCOF: [f32; 3] = [2.443_315_711_809_948E-005, -1.388_731_625_493_765E-003, 4.166_664_568_298_827E-002];
    let sign_sin = x.to_bits() & 0x8000_0000;
    let mut x = f32::from_bits(x.to_bits() & 0x7fff_ffff);
    let y = x * FOPI;
    // cvttps: truncation (out-of-range lanes give i32::MIN; irrelevant for |x| < 2π here).
    let mut j = if y.is_finite() && y.abs() < 2_147_483_648.0 { y as i32 } else { i32::MIN };
    j = j.wrapping_add(1) & !1;
    let yf = j as f32;
    let swap_sign_sin = ((j & 4) as u32) << 29;
    let poly_mask = (j & 2) == 0;
    x = yf.mul_add(DP1, x);
    x = yf.mul_add(DP2, x);
    x = yf.mul_add(DP3, x);
    let sign_cos = ((!(j.wrapping_sub(2)) & 4) as u32) << 29;
    let sign_sin = sign_sin ^ swap_sign_sin;
    let z = x * x;
    let mut yc = COSCOF[0];
    yc = yc.mul_add(z, COSCOF[1]);
    yc = yc.mul_add(z, COSCOF[2]);
    yc *= z;
    yc *= z;
    yc = (-z).mul_add(0.5, yc);
    yc += 1.0;
    let mut ys = SINCOF[0];
    ys = ys.mul_add(z, SINCOF[1]);
    ys = ys.mul_add(z, SINCOF[2]);
    ys *= z;
    ys = ys.mul_add(x, x);
    // Lane select written as torch's add-of-masked-values (adding +0 is exact).
    let (sin_v, cos_v) = if poly_mask { (0.0 + ys, yc + 0.0) } else { (yc + 0.0, 0.0 + ys) };
    (f32::from_bits(sin_v.to_bits() ^ sign_sin), f32::from_bits(cos_v.to_bits() ^ sign_cos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_reference_outputs() {
        // std::mt19937 default seed 5489: the 10000th output is 4123659995 (C++ standard).
        let mut mt = Mt19937::new(5489);
        let mut v = 0;
        for _ in 0..10000 {
            v = mt.next_u32();
        }
        assert_eq!(v, 4_123_659_995);
    }

    #[test]
    fn randint_matches_torch() {
        // torch 2.x: g = torch.Generator().manual_seed(42); torch.randn(1, 4, 8, 8, generator=g);
        // [torch.randint(4, (1,), generator=g).item() for _ in range(24)]
        // (the first 24 rolls of tests/fixtures/golden/pix2pix_zero/invert_reg.safetensors)
        let mut g = TorchRng::new(42);
        g.randn(256);
        let got: Vec<u64> = (0..24).map(|_| g.randint(4)).collect();
        assert_eq!(got, [2, 1, 3, 2, 0, 1, 0, 0, 2, 1, 3, 3, 2, 2, 1, 3, 3, 3, 0, 3, 0, 1, 0, 1]);
        // seed 7: three randint(1000003), then two randint(2**40) (the 64-bit draw)
        let mut g = TorchRng::new(7);
        let got: Vec<u64> = [1_000_003, 1_000_003, 1_000_003, 1 << 40, 1 << 40].iter().map(|&h| g.randint(h)).collect();
        assert_eq!(got, [740_634, 410_964, 715_674, 1_058_444_908_099, 909_345_358_743]);
    }

    #[test]
    fn cephes_matches_libm_closely() {
        for i in 1..1000 {
            let x = i as f32 / 1000.0;
            assert!((cephes_logf(x) - x.ln()).abs() <= 2e-7 * x.ln().abs().max(1.0));
            let t = x * 6.283_185_5;
            let (s, c) = cephes_sincosf(t);
            assert!((s - t.sin()).abs() < 3e-7 && (c - t.cos()).abs() < 3e-7, "{t}");
        }
    }
}
