"""512-bit vector values for Numba kernels, built from llvmlite IR.

Numba has no vector types, so this module adds three (`I8x64`, `I32x16`, `F32x16`) whose LLVM
representation is a `<N x T>` vector, and intrinsics that load, combine and store them. Kernels
written with them compile to straight zmm code on AVX-512 hosts; on AVX2 hosts LLVM splits each
512-bit op into two ymm ops, so the same kernel source serves both.

The only instruction-set-specific op is the int8 dot product `dot_u8s8` (vpdpbusd semantics:
unsigned bytes times signed bytes, summed in groups of four into int32 lanes). It comes in three
builds; `kernels.isa` picks one for the machine and kernels are compiled per ISA:
  dot_u8s8_vnni  AVX-512 VNNI vpdpbusd, one instruction;
  dot_u8s8_avx2  vpmaddubsw + vpmaddwd on ymm halves: exact only while each unsigned byte is < 128
                 (vpmaddubsw saturates int16 pair sums), which callers guarantee (nibbles, 5-bit);
  dot_u8s8_avx2_wide  the same on the low and high nibbles separately: exact for all bytes.
"""
from __future__ import annotations

import functools

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

_I8, _I16, _I32, _I64, _F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()


class VecType(types.Type):
    def __init__(self, elem: str, lanes: int) -> None:
        self.elem, self.lanes = elem, lanes
        super().__init__(name=f"{elem}x{lanes}")


I8x64, I32x16, F32x16 = VecType("i8", 64), VecType("i32", 16), VecType("f32", 16)
_LLVM = {I8x64: ir.VectorType(_I8, 64), I32x16: ir.VectorType(_I32, 16), F32x16: ir.VectorType(_F32, 16)}


@register_model(VecType)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _LLVM[fe_type])


@functools.cache
def host_features() -> frozenset[str]:
    """The host's CPU feature names as LLVM spells them (avx2, avx512bw, avx512vnni, f16c...)."""
    return frozenset(k for k, on in llvm.get_host_cpu_features().items() if on)


def _ptr(context, builder, arrty, arr, offset, elem_ty):
    """Address of arr.flat[offset] (C-contiguous array), cast to a pointer to `elem_ty`."""
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [offset]), elem_ty.as_pointer())


def _intr(builder, name, ret, args):
    mod = builder.module
    fnty = ir.FunctionType(ret, [a.type for a in args])
    fn = cgutils.get_or_insert_function(mod, fnty, name)
    return builder.call(fn, args)


def _splat(value, n):
    return ir.Constant(ir.VectorType(value.type, n), [value.constant] * n)


# --- construction, loads and stores ---------------------------------------------------------
@intrinsic
def zero_i32(typingctx):
    return I32x16(), lambda ctx, b, sig, args: ir.Constant(_LLVM[I32x16], None)


@intrinsic
def zero_f32(typingctx):
    return F32x16(), lambda ctx, b, sig, args: ir.Constant(_LLVM[F32x16], None)


@intrinsic
def splat_f32(typingctx, x):
    def codegen(ctx, b, sig, args):
        v = ctx.cast(b, args[0], sig.args[0], types.float32)
        vec = b.insert_element(ir.Constant(_LLVM[F32x16], None), v, _I32(0))
        return b.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(_I32, 16), [0] * 16))
    return F32x16(x), codegen


@intrinsic
def load_i8x64(typingctx, arr, offset):
    """64 bytes of a uint8/int8 array from element `offset` (unaligned)."""
    def codegen(ctx, b, sig, args):
        return b.load(_ptr(ctx, b, sig.args[0], args[0], args[1], _LLVM[I8x64]), align=1)
    return I8x64(arr, offset), codegen


@intrinsic
def bcast8_i8x64(typingctx, arr, offset):
    """8 bytes from `offset`, repeated 8 times: every 64-bit lane sees the same 8 activations."""
    def codegen(ctx, b, sig, args):
        q = b.load(_ptr(ctx, b, sig.args[0], args[0], args[1], _I64), align=1)
        vec = b.insert_element(ir.Constant(ir.VectorType(_I64, 8), None), q, _I32(0))
        vec = b.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(_I32, 8), [0] * 8))
        return b.bitcast(vec, _LLVM[I8x64])
    return I8x64(arr, offset), codegen


@intrinsic
def load_f32x16(typingctx, arr, offset):
    def codegen(ctx, b, sig, args):
        return b.load(_ptr(ctx, b, sig.args[0], args[0], args[1], _LLVM[F32x16]), align=4)
    return F32x16(arr, offset), codegen


@intrinsic
def store_f32x16(typingctx, arr, offset, v):
    def codegen(ctx, b, sig, args):
        b.store(args[2], _ptr(ctx, b, sig.args[0], args[0], args[1], _LLVM[F32x16]), align=4)
        return ctx.get_dummy_value()
    return types.none(arr, offset, v), codegen


@intrinsic
def load_pairs_f32x16(typingctx, arr, offset):
    """8 scales from `offset`, each repeated twice: lanes 2r and 2r+1 both belong to row r in the
    r8 layout. `arr` is float32, uint16 holding float16 bits (Numba has no CPU float16), or int8."""
    src_ty = {types.uint16: ir.HalfType(), types.int8: _I8}.get(arr.dtype, _F32)

    def codegen(ctx, b, sig, args):
        v = b.load(_ptr(ctx, b, sig.args[0], args[0], args[1], ir.VectorType(src_ty, 8)), align=1)
        if src_ty == _I8:
            v = b.sitofp(v, ir.VectorType(_F32, 8))
        elif src_ty != _F32:
            v = b.fpext(v, ir.VectorType(_F32, 8))
        return b.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, 16), [i // 2 for i in range(16)]))
    return F32x16(arr, offset), codegen


@intrinsic
def store_pair_sums(typingctx, arr, offset, v):
    """arr[offset + r] = v[2r] + v[2r + 1] for r < 8: folds the two lanes of each row."""
    def codegen(ctx, b, sig, args):
        v = args[2]
        even = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, 8), list(range(0, 16, 2))))
        odd = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, 8), list(range(1, 16, 2))))
        b.store(b.fadd(even, odd), _ptr(ctx, b, sig.args[0], args[0], args[1], ir.VectorType(_F32, 8)), align=4)
        return ctx.get_dummy_value()
    return types.none(arr, offset, v), codegen


# --- arithmetic -----------------------------------------------------------------------------
@intrinsic
def nibbles(typingctx, v):
    """(low nibbles, high nibbles) of 64 packed bytes, each as 64 bytes in 0..15."""
    def codegen(ctx, b, sig, args):
        mask = _splat(_I8(0x0F), 64)
        lo = b.and_(args[0], mask)
        hi = b.and_(b.lshr(args[0], _splat(_I8(4), 64)), mask)
        return ctx.make_tuple(b, sig.return_type, [lo, hi])
    return types.UniTuple(I8x64, 2)(v), codegen


@intrinsic
def to_f32(typingctx, v):
    return F32x16(v), lambda ctx, b, sig, args: b.sitofp(args[0], _LLVM[F32x16])


@intrinsic
def fma_f32(typingctx, a, x, c):
    """a * x + c, one rounding (vfmadd)."""
    def codegen(ctx, b, sig, args):
        return _intr(b, "llvm.fma.v16f32", _LLVM[F32x16], list(args))
    return F32x16(a, x, c), codegen


@intrinsic
def mul_f32(typingctx, a, x):
    return F32x16(a, x), lambda ctx, b, sig, args: b.fmul(args[0], args[1])


@intrinsic
def add_f32(typingctx, a, x):
    return F32x16(a, x), lambda ctx, b, sig, args: b.fadd(args[0], args[1])


_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


@intrinsic
def exp_f32x16(typingctx, x):
    """e^x per lane for x <= 0 (softmax weights; lanes below -87.3 give 0): x = n ln2 + r with
    n = rint(x / ln2), e^r by Cephes expf's degree-7 polynomial (~1 ulp), times 2^n built in the
    exponent bits. Numba's np.exp calls libm once per value, ~20 cycles of a scalar loop."""
    def codegen(ctx, b, sig, args):
        vt, it = _LLVM[F32x16], ir.VectorType(_I32, 16)
        c = lambda v: ir.Constant(vt, [_F32(v)] * 16)   # noqa: E731
        fma = lambda a, m, d: _intr(b, "llvm.fma.v16f32", vt, [a, m, d])   # noqa: E731
        x = args[0]
        n = _intr(b, "llvm.rint.v16f32", vt, [b.fmul(x, c(1.4426950408889634))])
        r = fma(n, c(2.12194440e-4), fma(n, c(-0.693359375), x))       # x - n ln2 in two parts
        p = c(_EXP_POLY[0])
        for k in _EXP_POLY[1:]:
            p = fma(p, r, c(k))
        y = fma(p, b.fmul(r, r), b.fadd(r, c(1.0)))
        two_n = b.bitcast(b.shl(b.add(b.fptosi(n, it), ir.Constant(it, [_I32(127)] * 16)),
                                ir.Constant(it, [_I32(23)] * 16)), vt)
        return b.select(b.fcmp_ordered("<", x, c(-87.3)), c(0.0), b.fmul(y, two_n))
    return F32x16(x), codegen


# --- the int8 dot product: acc[i] += sum_{j<4} u[4i+j] * s[4i+j] ------------------------------
@intrinsic
def dot_u8s8_vnni(typingctx, acc, u, s):
    def codegen(ctx, b, sig, args):
        acc, u, s = args
        vt = _LLVM[I32x16]
        return _intr(b, "llvm.x86.avx512.vpdpbusd.512", vt, [acc, b.bitcast(u, vt), b.bitcast(s, vt)])
    return I32x16(acc, u, s), codegen


def _half(b, v, which, n):
    return b.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n), list(range(which * n, which * n + n))))


def _maddubs_avx2(b, u, s, weight):
    """Per 32-bit lane of a 512-bit value: sum of 4 u8*s8 products (times `weight`), on ymm halves.
    vpmaddubsw adds products pairwise into int16 (saturating), vpmaddwd adds pairs into int32."""
    w16 = ir.Constant(ir.VectorType(_I16, 16), [weight] * 16)
    halves = []
    for h in range(2):
        p16 = _intr(b, "llvm.x86.avx2.pmadd.ub.sw", ir.VectorType(_I16, 16), [_half(b, u, h, 32), _half(b, s, h, 32)])
        halves.append(_intr(b, "llvm.x86.avx2.pmadd.wd", ir.VectorType(_I32, 8), [p16, w16]))
    return b.shuffle_vector(halves[0], halves[1], ir.Constant(ir.VectorType(_I32, 16), list(range(16))))


@intrinsic
def dot_u8s8_avx2(typingctx, acc, u, s):
    """Exact while every u byte is < 128 (then a pair of products fits int16)."""
    def codegen(ctx, b, sig, args):
        return b.add(args[0], _maddubs_avx2(b, args[1], args[2], 1))
    return I32x16(acc, u, s), codegen


@intrinsic
def dot_u8s8_avx2_wide(typingctx, acc, u, s):
    """Exact for all u: u = 16*hi + lo with nibbles, each product pair then fits int16."""
    def codegen(ctx, b, sig, args):
        acc, u, s = args
        mask = _splat(_I8(0x0F), 64)
        lo = b.and_(u, mask)
        hi = b.lshr(u, _splat(_I8(4), 64))
        return b.add(acc, b.add(_maddubs_avx2(b, lo, s, 1), _maddubs_avx2(b, hi, s, 16)))
    return I32x16(acc, u, s), codegen


# --- scalar float16 conversion (vectorises to vcvtph2ps / vcvtps2ph in loops) ----------------
@intrinsic
def f16_to_f32(typingctx, h):
    """A float16 stored as uint16 bits -> float32 (exact)."""
    def codegen(ctx, b, sig, args):
        return b.fpext(b.bitcast(args[0], ir.HalfType()), _F32)
    return types.float32(types.uint16), codegen


@intrinsic
def f32_to_f16(typingctx, x):
    """float32 -> float16 bits (round to nearest even), as uint16."""
    def codegen(ctx, b, sig, args):
        return b.bitcast(b.fptrunc(args[0], ir.HalfType()), _I16)
    return types.uint16(types.float32), codegen


@intrinsic
def scale_at(typingctx, arr, i):
    """arr.flat[i] as float32, where `arr` is float32 or uint16 holding float16 bits."""
    half = arr.dtype == types.uint16

    def codegen(ctx, b, sig, args):
        v = b.load(_ptr(ctx, b, sig.args[0], args[0], args[1], ir.HalfType() if half else _F32))
        return b.fpext(v, _F32) if half else v
    return types.float32(arr, i), codegen


@intrinsic
def prefetch_l2(typingctx, arr, offset):
    """Ask for the cache line holding arr.flat[offset] to be brought into L2 (x86 prefetcht1,
    AArch64 prfm pldl2keep); no fault, no result. For a stream the hardware prefetcher cannot
    see coming: the next group while this one is re-read from cache (kernels.ops.d8_groups)."""
    def codegen(ctx, b, sig, args):
        p = _ptr(ctx, b, sig.args[0], args[0], args[1], ir.IntType(8))
        _intr(b, "llvm.prefetch.p0", ir.VoidType(), [p, _I32(0), _I32(2), _I32(1)])   # read, locality 2, data
        return ctx.get_dummy_value()
    return types.none(arr, offset), codegen


# --- thread synchronisation inside one parallel region (kernels.step) ---------------------------
def _atomic_rmw(op: str):
    """An intrinsic (arr, idx, val) -> old value that applies `op` ("add", "xchg") to
    arr.flat[idx] atomically (int64 array, sequentially consistent)."""
    def rmw(typingctx, arr, idx, val):
        def codegen(ctx, b, sig, args):
            i = ctx.cast(b, args[1], sig.args[1], types.int64)
            v = ctx.cast(b, args[2], sig.args[2], types.int64)
            return b.atomic_rmw(op, _ptr(ctx, b, sig.args[0], args[0], i, _I64), v, "seq_cst")
        return types.int64(arr, idx, val), codegen
    rmw.__name__ = rmw.__qualname__ = f"atomic_{op}_i64"   # the intrinsic's name in Numba's registry
    return intrinsic(rmw)


atomic_add_i64 = _atomic_rmw("add")     # arr.flat[idx] += val; returns the old value
atomic_xchg_i64 = _atomic_rmw("xchg")   # arr.flat[idx] = val; returns the old value


@intrinsic
def atomic_load_i64(typingctx, arr, idx):
    """arr.flat[idx], read atomically (sequentially consistent): later loads cannot move before it."""
    def codegen(ctx, b, sig, args):
        i = ctx.cast(b, args[1], sig.args[1], types.int64)
        return b.load_atomic(_ptr(ctx, b, sig.args[0], args[0], i, _I64), "seq_cst", 8)
    return types.int64(arr, idx), codegen


@intrinsic
def cpu_relax(typingctx):
    """The spin-wait hint (x86 `pause`)."""
    def codegen(ctx, b, sig, args):
        _intr(b, "llvm.x86.sse2.pause", ir.VoidType(), [])
        return ctx.get_dummy_value()
    return types.none(), codegen


@intrinsic
def cycles(typingctx):
    """The time-stamp counter (rdtsc): cheap time for spin-wait timeouts."""
    def codegen(ctx, b, sig, args):
        return _intr(b, "llvm.readcyclecounter", _I64, [])
    return types.int64(), codegen


# --- Q6 (6-bit) r8 blocks ----------------------------------------------------------------------
@intrinsic
def unpack_q6(typingctx, arr, offset):
    """192 bytes of a q6 group-block (kernels.quant) -> its four 8x8 chunks as bytes 0..63:
    chunk 2i / 2i+1 take the low / high nibbles of bytes [64i, 64i+64), and bits 2c..2c+1 of
    bytes [128, 192) are chunk c's two high bits."""
    def codegen(ctx, b, sig, args):
        vt = _LLVM[I8x64]
        lo = [b.load(_ptr(ctx, b, sig.args[0], args[0], b.add(args[1], ctx.get_constant(sig.args[1], 64 * i)), vt),
                      align=1) for i in range(3)]
        mask, m3 = _splat(_I8(0x0F), 64), _splat(_I8(0x30), 64)
        out = []
        for c in range(4):
            v = lo[c >> 1]
            nib = b.and_(v, mask) if c % 2 == 0 else b.lshr(v, _splat(_I8(4), 64))
            h = lo[2]
            sh = 2 * c - 4                     # move bits 2c..2c+1 to bits 4..5
            h = b.shl(h, _splat(_I8(-sh), 64)) if sh < 0 else (b.lshr(h, _splat(_I8(sh), 64)) if sh else h)
            out.append(b.or_(nib, b.and_(h, m3)))
        return ctx.make_tuple(b, sig.return_type, out)
    return types.UniTuple(I8x64, 4)(arr, offset), codegen


@intrinsic
def const32_i8x64(typingctx):
    """64 bytes of 32 (the offset of Q6_K quants): dot(const32, x) = 32 * the lane's activation sum."""
    return I8x64(), lambda ctx, b, sig, args: _splat(_I8(32), 64)


@intrinsic
def sub_i32(typingctx, a, c):
    return I32x16(a, c), lambda ctx, b, sig, args: b.sub(args[0], args[1])


# --- dense float rows (kernels.ops.mul_dense) ---------------------------------------------------
@intrinsic
def load_w16(typingctx, arr, offset):
    """16 consecutive elements of a float32 array, or of a uint16 array holding float16 bits
    (converted with vcvtph2ps), as float32 lanes."""
    half = arr.dtype == types.uint16

    def codegen(ctx, b, sig, args):
        if half:
            v = b.load(_ptr(ctx, b, sig.args[0], args[0], args[1], ir.VectorType(ir.HalfType(), 16)), align=2)
            return b.fpext(v, _LLVM[F32x16])
        return b.load(_ptr(ctx, b, sig.args[0], args[0], args[1], _LLVM[F32x16]), align=4)
    return F32x16(arr, offset), codegen


@intrinsic
def hsum_f32(typingctx, v):
    """The sum of the 16 lanes (a halving tree of adds)."""
    def codegen(ctx, b, sig, args):
        v = args[0]
        n = 16
        while n > 1:
            n //= 2
            lo = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n), list(range(n))))
            hi = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n), list(range(n, 2 * n))))
            v = b.fadd(lo, hi)
        return b.extract_element(v, _I32(0))
    return types.float32(v), codegen
