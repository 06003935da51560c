#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (tests/fuzz/corpus/<target>/).

Each seed is a small, readable call in the byte format the targets read
(fuzz_util.h: ByteReader; fields in the order Build() reads them), so that
fuzzing starts from valid calls of every kind and mutates from there. Run it
after changing the format; the corpus is committed.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def u8(x):
    return bytes([x & 0xFF])


def u32(x):
    return struct.pack('<I', x & 0xFFFFFFFF)


def u64(x):
    return struct.pack('<Q', x & 0xFFFFFFFFFFFFFFFF)


def size(x):
    """A small count (below 8192) in ByteReader::Size's small form."""
    assert 0 <= x < 8192
    return bytes([x >> 8, x & 0xFF])


def edge(index):
    """ByteReader::Size's edge-value table, by index."""
    return bytes([0xA0, index])


SIZE_MAX_EDGE = 37  # index of SIZE_MAX in kEdges


def exact(misalign=0):
    """PlaceFrom: an exact block, optionally misaligned by 1..7 bytes."""
    return u8(0) + (u8(0xE0 + misalign) if misalign else u8(0))


NULL = u8(13) + u8(0)

# FillValues magnitude classes (index into kMagnitudes) and kinds.
MAG = {'1': 0, '1e-2': 1, '1e2': 2, '1e4': 3, '1e19': 5, '1e30': 6, '3e38': 7, '1e-38': 9,
       '1e-41': 10, 'zero': 11, 'f16max': 12, 'f16sub': 13}
UNIFORM, EQUAL, SIGNS, INTS = 0, 1, 2, 3
SPECIAL = {'nan': 2, 'inf': 4, '-inf': 5, 'max': 6, '1e30': 8, '-1e30': 9, 'denorm': 13,
           '65520': 17}


def values(mag='1', kind=UNIFORM, seed=1, planted=()):
    out = u8((MAG[mag] << 2) | kind) + u64(seed) + u8(len(planted))
    for index, special in planted:
        out += u32(index) + u8(SPECIAL[special])
    return out


def options(scale=None, window=None, sinks=None):
    if scale is None and window is None and sinks is None:
        return u8(0)  # NULL options
    flags = 1 | (2 if scale is not None else 0) | (4 if window is not None else 0) | \
        (8 if sinks is not None else 0)
    out = u8(flags)
    if scale is not None:
        out += scale
    if window is not None:
        out += size(window)
    if sinks is not None:
        out += size(sinks)
    return out


def float_special(name):
    return u8(0xC0) + u8(SPECIAL[name])


def float_small(x16):
    """ByteReader::Float's ordinary form: int8 / 16."""
    return u8(0) + u8(x16)


def attention(entry, target=0, dtype=0, n_tokens=16, kv_heads=2, head_dim=8, layout=0,
              group=1, q_tokens=1, q_layout=0, past_auto=True, n_past=0, opts=u8(0),
              out_layout=0, log_z=True, range_all=True, begin=0, end=0, k_place=None,
              scratch_mode=0, scratch_offset=0, k=None, v=None, q=None, nulls=0,
              scale_layout=0, k_scale=None, v_scale=None, strides=None):
    """One call of fuzz_attention.cc; entry 0 decode, 1 prefill, 2 partial.

    dtype 3 (int8) adds the scales: their layout (0 [token][head], 1
    [head][token], 0xF8 a NULL int8_scales), placement and values."""
    int8 = dtype == 3
    tokens = n_tokens if isinstance(n_tokens, bytes) else size(n_tokens)
    b = u8(target) + u8(dtype) + tokens + size(kv_heads) + size(head_dim)
    b += u8(layout)
    if layout == 2:
        b += u8(3) + u8(5)
    if layout == 4:  # K token, K head, V token, V head strides, as Size fields
        b += strides
    b += u8(group - 1)
    if entry != 0:
        b += size(q_tokens) + u8(q_layout)
        if q_layout == 2:
            b += u8(1) + u8(2)
        b += u8(0) if past_auto else u8(0xC0) + size(n_past)
    b += opts + u8(nulls)
    if entry == 1:
        b += u8(out_layout)
        if out_layout == 2:
            b += u8(2) + u8(1)
    if entry == 2:
        if range_all:
            b += u8(0)
        elif begin <= end:
            b += u8(0x80) + u32(begin) + u32(end)
        else:  # raw values, so that the range can be reversed
            b += u8(0xE0) + size(begin) + size(end)
    if int8:
        b += u8(scale_layout)
    if entry == 1:
        b += u8(1 if log_z else 0)
    if layout == 3:
        b += u8(0) + u8(0)  # fused K/V: exact, aligned
    else:
        b += (k_place or exact()) + exact()
    if int8:
        b += exact() * 2  # K and V scales
    b += exact()  # q
    if entry != 2:
        b += exact()  # out
    if entry == 1 and log_z:
        b += exact()
    if entry == 2:
        b += exact() * 3
    b += u8(scratch_mode) + u8(scratch_offset) + u8(0)  # scratch, no aliasing
    b += (k or values()) + (v or values(seed=2)) + (q or values(seed=3))
    if int8:
        b += (k_scale or values('1e-2', seed=4)) + (v_scale or values('1e-2', seed=5))
    return b


def partial_state(merge, n_rows=4, head_dim=8, log_z=True, m=None, l=None, o=None,
                  m2=None, l2=None, o2=None, nulls=0):
    b = size(64) + u8(0 if merge else 1) + size(n_rows) + size(head_dim) + u8(nulls)
    b += exact() * 3
    if merge:
        b += exact() * 3
    else:
        b += exact() + (u8(1) + exact() if log_z else u8(0))
    b += u8(0)  # no aliasing
    b += (m or values('1e4', UNIFORM, 1)) + (l or values('1e4', EQUAL, 2)) + \
        (o or values('1e4', UNIFORM, 3))
    if merge:
        b += (m2 or values('1', UNIFORM, 4)) + (l2 or values('1', EQUAL, 5)) + \
            (o2 or values('1', UNIFORM, 6))
    return b


def write(target, name, data):
    directory = os.path.join(HERE, 'corpus', target)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), 'wb') as f:
        f.write(data)


def main():
    for entry, target in ((0, 'fuzz_decode'), (1, 'fuzz_prefill'), (2, 'fuzz_prefill_partial')):
        seeds = {
            'f32_mha': attention(entry),
            'f16_gqa': attention(entry, dtype=1, group=4, head_dim=64, layout=1, target=1),
            'bf16_padded': attention(entry, dtype=2, layout=2, head_dim=17, target=2),
            'fused_kv': attention(entry, layout=3, head_dim=33, kv_heads=3, target=3),
            'window_sinks': attention(entry, n_tokens=200, kv_heads=1,
                                      opts=options(float_small(8), 10, 3)),
            'overflow_1e30': attention(entry, k=values('1e30', SIGNS),
                                       q=values('1e30', SIGNS, 3)),
            'subnormal': attention(entry, dtype=1, k=values('f16sub'), v=values('f16sub', seed=5)),
            'equal_keys': attention(entry, k=values('1', EQUAL), head_dim=5),
            'nan_value': attention(entry, v=values(planted=((7, 'nan'),))),
            'inf_key': attention(entry, k=values(planted=((3, '-inf'),))),
            'single_token': attention(entry, n_tokens=1, kv_heads=1, head_dim=1),
            'empty_cache': attention(entry, n_tokens=0, q_tokens=0),
            'misaligned_k': attention(entry, k_place=exact(misalign=2)),
            'scratch_short': attention(entry, scratch_mode=4),
            'scratch_offset': attention(entry, scratch_offset=13),
            'nan_scale': attention(entry, opts=options(float_special('nan'))),
            'huge_tokens': attention(entry, n_tokens=edge(SIZE_MAX_EDGE)),
            # One token, so any stride is valid: nothing may form the address
            # of a token past it (the prefetch cursor once did, UBSan).
            'huge_strides_one_token': attention(entry, n_tokens=1, kv_heads=1, layout=4,
                                                strides=edge(SIZE_MAX_EDGE) * 4),
            'int8_gqa': attention(entry, dtype=3, group=4, head_dim=64, layout=1,
                                  k=values('1e2'), v=values('1e2', seed=2)),
            'int8_head_major_scales': attention(entry, dtype=3, head_dim=20, scale_layout=1,
                                                k=values('1e2', INTS), v=values('1e2', SIGNS)),
            'int8_nan_scale': attention(entry, dtype=3, k=values('1e2'),
                                        v_scale=values('1e-2', seed=5, planted=((3, 'nan'),))),
            'int8_no_scales': attention(entry, dtype=3, scale_layout=0xF8),
        }
        if entry != 0:
            seeds['prefill_chunk'] = attention(entry, n_tokens=150, q_tokens=70, kv_heads=1,
                                               group=2, head_dim=16, q_layout=2, out_layout=2)
            seeds['past_beyond'] = attention(entry, past_auto=False, n_past=100)
        if entry == 2:
            seeds['split_range'] = attention(entry, n_tokens=100, q_tokens=3, range_all=False,
                                             begin=20, end=70)
            seeds['reversed_range'] = attention(entry, range_all=False, begin=9, end=3)
        for name, data in seeds.items():
            write(target, name, data)

    write('fuzz_partial_state', 'merge', partial_state(True))
    write('fuzz_partial_state', 'finalize', partial_state(False))
    write('fuzz_partial_state', 'merge_overflow',
          partial_state(True, m=values('1', EQUAL, 1), l=values('3e38', EQUAL, 2),
                        m2=values('1', EQUAL, 1), l2=values('3e38', EQUAL, 2)))
    write('fuzz_partial_state', 'merge_nan',
          partial_state(True, o2=values('1', UNIFORM, 6, planted=((5, 'nan'),))))
    write('fuzz_partial_state', 'finalize_masked',
          partial_state(False, l=values('zero', EQUAL, 2)))
    write('fuzz_partial_state', 'finalize_inf_l',
          partial_state(False, log_z=False, l=values('1', EQUAL, 2, planted=((1, 'inf'),))))
    write('fuzz_partial_state', 'merge_null_into', partial_state(True, nulls=0xFF))

    # fuzz_covariance: target, mode, heads - 1, head_dim - 1, forgetting, tokens, then Feed's
    # seed, magnitude (2^(x-40)) and planted-special byte.
    def cov(mode, heads=2, dim=16, tokens=20, forgetting=0):
        return u8(0) + u8(mode) + u8(heads - 1) + u8(dim - 1) + u8(forgetting) + u8(tokens) + \
            u64(7) + u8(40) + u8(0)
    write('fuzz_covariance', 'load_garbage', cov(0) + b'covattn?' + bytes(range(64)))
    write('fuzz_covariance', 'file_intact', cov(1) + u8(0))
    write('fuzz_covariance', 'file_truncated', cov(1) + u8(1) + u8(0) + u32(50))
    write('fuzz_covariance', 'file_bitflip', cov(1, forgetting=0xC0) + u8(7) + u8(1) + u8(1) +
          u32(30) + u8(3))
    write('fuzz_covariance', 'calls', cov(2) + u8(0) + u8(1) + u8(33) + u64(9) + u8(44) + u8(0) +
          u8(1) + u8(3) + u8(0) + u8(1) + b'\x00\x10' * 64 + u8(5) + u8(4) + u8(0))

    # fuzz_cache: target, mode, heads - 1, head_dim - 1, dtype, sinks, window,
    # outliers, forgetting, flags, tokens, then Append's dtype, head-major,
    # shape, seed, magnitude (2^(x-40)) and planted-special byte.
    def append(tokens_byte, dtype=0, head_major=0, seed=11, magnitude=40):
        return u8(tokens_byte) + u8(dtype) + u8(head_major) + u8(0) + u64(seed) + u8(magnitude) + \
            u8(0)

    def cache(mode, heads=2, dim=16, dtype=0, sinks=2, window=6, outliers=2, flags=0, tokens=30):
        return u8(0) + u8(mode) + u8(heads - 1) + u8(dim - 1) + u8(dtype) + u8(sinks) + \
            u8(window) + u8(outliers) + u8(0) + u8(flags) + append(tokens)
    write('fuzz_cache', 'load_garbage', cache(0) + b'covattnC' + bytes(range(64)))
    write('fuzz_cache', 'file_intact', cache(1, dtype=1) + u8(0))
    write('fuzz_cache', 'file_truncated', cache(1) + u8(1) + u8(0) + u32(50))
    write('fuzz_cache', 'file_bitflip', cache(1, dtype=2) + u8(1) + u8(1) + u32(300) + u8(3))
    write('fuzz_cache', 'file_dropping', cache(1, flags=0xE0) + u8(0))
    decode = u8(2) + u8(1) + u8(0) + bytes(2 * 16 * 2) + u8(0) + u8(0) + u8(1)
    write('fuzz_cache', 'calls', cache(2) + u8(0) + append(70, dtype=1, head_major=1) + decode +
          u8(3) + u8(1) + append(5, dtype=2) + decode)
    write('fuzz_cache', 'readout_only', cache(2, sinks=0, window=0, outliers=0) + decode)
    # An int8 cache (dtype 3): a file of vectors with padding (d = 6), and calls.
    write('fuzz_cache', 'int8_file_bitflip', cache(1, dim=6, dtype=3) + u8(1) + u8(1) + u32(140) +
          u8(3))
    write('fuzz_cache', 'int8_calls', cache(2, dtype=3) + u8(0) + append(70, dtype=1) + decode +
          u8(3) + u8(1) + append(5, dtype=2) + decode)

    # The same target with format 2's config fields after flags' place: n_retained,
    # retention, retention_decay, summary, rope (even head_dim), the drop byte, then the
    # first append; mode 2 then runs steps (0 append, 2 decode, 4 prefill). A prefill
    # step: Append's block bytes (tokens first), group - 1, wrong-heads and
    # wrong-positions bytes, head-stride padding, per query element a byte (below 0xFC:
    # then int8 / 64 from the next byte; 0xFC and above: a Float follows), scale, log Z,
    # short scratch.
    def cache2(heads=2, dim=16, dtype=1, sinks=2, window=6, outliers=2, retained=2,
               summary=0, rope=1, tokens=30):
        return u8(0) + u8(2) + u8(heads - 1) + u8(dim - 1) + u8(dtype) + u8(sinks) + \
            u8(window) + u8(outliers) + u8(0) + u8(retained) + u8(0) + u8(0) + u8(summary) + \
            u8(rope) + u8(0) + append(tokens)

    def prefill(tokens, heads=2, dim=16, group=4, pad=1, nan_at=None):
        out = u8(4) + append(tokens, seed=tokens) + u8(group - 1) + u8(0) + u8(0) + u8(pad)
        n_q = heads * group
        elems = tokens * n_q * (dim + pad)
        for i in range(elems):
            out += u8(0xFC) + float_special('nan') if i == nan_at else u8(0) + u8((i * 37) % 200)
        return out + u8(0) + u8(1) + u8(0)
    write('fuzz_cache', 'prefill', cache2() + prefill(12) +
          u8(0) + append(40, dtype=2, head_major=1) + prefill(9, pad=0) + prefill(3, nan_at=40))
    write('fuzz_cache', 'int8_prefill', cache2(dtype=3) + prefill(12) +
          u8(0) + append(40, dtype=2, head_major=1) + prefill(9, pad=0))

    # fuzz_checkpoint mode 1: head_dim / 2 - 1, KV heads - 1, group - 1, hidden - 1,
    # layers - 1, vocab - 1, seq_len - 1, shared (odd) or separate, a header field to
    # overwrite (below 112: field x % 7, then its int32 value), magnitude (2^(x-20)),
    # seed, planted specials, damages, then the tokens run.
    def checkpoint(shared=1, overwrite=b'\xff', planted=b'\x00', damages=b'\x00'):
        return u8(1) + u8(1) + u8(1) + u8(1) + u8(7) + u8(1) + u8(9) + u8(3) + u8(shared) + \
            overwrite + u8(20) + u64(5) + planted + damages + bytes([1, 2, 3, 4, 5, 6])

    def header(*fields):
        return b''.join(struct.pack('<i', f) for f in fields)
    write('fuzz_checkpoint', 'valid_shared', checkpoint())
    write('fuzz_checkpoint', 'valid_separate', checkpoint(shared=0))
    write('fuzz_checkpoint', 'truncated', checkpoint(damages=u8(1) + u8(0) + u32(100)))
    # DamageFile reads a flip's bit before its byte (the right operand of ^= first).
    write('fuzz_checkpoint', 'sign_flip_vocab',
          checkpoint(damages=u8(1) + u8(1) + u8(7) + u32(23)))
    write('fuzz_checkpoint', 'odd_head_dim', checkpoint(overwrite=u8(0) + struct.pack('<i', 36)))
    write('fuzz_checkpoint', 'dim_not_dividing',
          checkpoint(overwrite=u8(0) + struct.pack('<i', 18)))
    write('fuzz_checkpoint', 'kv_not_dividing',
          checkpoint(overwrite=u8(4) + struct.pack('<i', 3)))
    write('fuzz_checkpoint', 'negative_layers',
          checkpoint(overwrite=u8(2) + struct.pack('<i', -1)))
    write('fuzz_checkpoint', 'huge_hidden',
          checkpoint(overwrite=u8(1) + struct.pack('<i', 0x7FFFFFFF)))
    write('fuzz_checkpoint', 'nan_weight', checkpoint(planted=u8(1) + u32(17) + u8(2)))
    write('fuzz_checkpoint', 'raw_header_only', u8(0) + header(32, 96, 2, 4, 2, 40, 64))
    write('fuzz_checkpoint', 'raw_export_v1', u8(0) + header(0x616b3432, 1) + bytes(64))
    write('fuzz_checkpoint', 'raw_empty', u8(0))
    big = 0x7FFFFFFF
    write('fuzz_checkpoint', 'raw_overflow',
          u8(0) + header(1 << 30, big, big, 1 << 22, 1 << 22, big, big))

    for name, text in {'one': b'avx2', 'list': b' fallback , SSE4', 'fallback': b'fallback',
                       'unknown': b'avx9000', 'foreign': b'neon,sve', 'empty': b'',
                       'commas': b' , ,', 'case': b'Avx3,EMU128'}.items():
        write('fuzz_restrict_targets', name, text)


if __name__ == '__main__':
    main()
