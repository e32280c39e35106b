"""Optional numba kernels for ``ctopk`` / ``crandk`` (see ``chunked``): same bytes, same decodes.

What goes in: the flat float32 input (and its int32 view), the chunk geometry
(``n`` elements, chunks of ``L``, ``K`` kept per chunk, ``min(K, len)`` in a
short last chunk) and a range of chunks ``[c0, c1)`` with ``c0`` a multiple
of 8, so that every range starts its bit fields on a byte. What comes out:
the payload's index fields and value codes, written in place, and the
chunks' float32 levels, exactly as ``chunked``'s numpy path writes them:

* the kept set of a chunk is every entry whose magnitude is above the
  ``k``-th largest magnitude ``T`` of the chunk, plus the lowest-index entries
  equal to ``T`` up to ``k`` (indices come out sorted, no sort);
* ``T`` is found exactly: the ``k`` strata maxima bound it from below (each
  stratum holds an element at least its maximum, so ``k`` elements are at
  least their minimum), the entries at or above that bound are the
  candidates, and a 4-digit radix select on their magnitude bits (a
  non-negative float32's bits order as its value) gives ``T``;
* 2bit: "high" = magnitude at least the ``ceil(k / 2)``-th largest kept one;
  levels are float64 sums in index order, then rounded to float32.

Decoding runs two passes: unpack and check the indices (range, strictly
increasing), then write each chunk once, zeros and values. The kernels only
say whether a payload is valid; the caller decodes an invalid one with the
numpy path, which names the fault. Compiled with ``nogil``; ``parallel`` runs
ranges of chunks on torch's thread count.

This module imports numba: ``chunked`` imports it only when it first needs
the kernels, and takes the numpy path when the import or ``warm()`` fails.
The kernels are module-level functions so that numba's on-disk cache holds
(a kernel that calls another one from a closure is recompiled in every process).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numba
import numpy as np
import torch

__all__ = ["decode", "encode", "parallel", "unpack_indices", "warm"]

_jit = numba.njit(nogil=True, cache=True)


def warm() -> None:
    """Compile the kernels now (or load numba's on-disk cache), so that a failure shows here."""
    x = np.zeros(8, dtype=np.float32)
    pay = np.zeros(16, dtype=np.uint8)
    e = np.zeros(0, dtype=np.float64)
    ix = np.zeros(4, dtype=np.int64)
    for given, bits in ((e, 2), (np.full(4, 0.5), 0)):
        for vbits, nlev in ((2, 2), (1, 1), (32, 1)):
            lv = np.zeros((2, nlev), dtype=np.float32)
            encode(x, x.view(np.int32), 8, 4, 2, 0, 2, given, bits, vbits, pay, lv, pay, x)
    unpack_indices(pay, 2, 8, 4, 2, 0, 2, ix)
    for vbits, nlev in ((2, 2), (1, 1), (32, 1)):
        lv = np.zeros((2, nlev), dtype=np.float32)
        for uu in (e, np.full(4, 0.5)):
            decode(ix, uu, pay, vbits, lv, x, 8, 4, 2, 0, 2, np.zeros(8, dtype=np.float32))


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="gossamer-chunked")


def parallel(fn: Callable[[int, int], Any], chunks: int, chunk: int, part_min: int) -> list[Any]:
    """Run ``fn(c0, c1)`` over ranges of chunks covering ``[0, chunks)`` on up to torch's thread
    count, at least ``part_min`` elements each; every ``c0`` is a multiple of 8. The calling
    thread runs the first range."""
    parts = max(1, min(torch.get_num_threads(), (chunks * chunk) // max(1, part_min)))
    per = -(-chunks // parts)
    per += -per % 8
    ranges = [(c0, min(c0 + per, chunks)) for c0 in range(0, chunks, per)]
    futures = [_pool().submit(fn, c0, c1) for c0, c1 in ranges[1:]]
    return [fn(*ranges[0])] + [f.result() for f in futures]



@_jit
def kth_largest(keys, nc, rank, hist):
    """The ``rank``-th largest (1-based) of ``keys[:nc]`` (values in [0, 2**31))."""
    prefix = 0
    mask = 0
    for shift in (24, 16, 8, 0):
        hist[:] = 0
        for i in range(nc):
            kv = keys[i]
            if kv & mask == prefix:
                hist[(kv >> shift) & 255] += 1
        d = 255
        while hist[d] < rank:
            rank -= hist[d]
            d -= 1
        prefix |= d << shift
        mask |= 255 << shift
    return prefix

@_jit
def select_top(ki, length, k, idx, cand, ckey, hist):
    """The kept in-chunk indices (sorted) of a chunk with magnitude bits ``ki`` into ``idx[:k]``."""
    if k == length:
        for t in range(length):
            idx[t] = t
        return
    lower = np.int32(0x7FFFFFFF)
    for j in range(k):
        lo = (j * length) // k
        hi = ((j + 1) * length) // k
        mx = np.int32(0)
        for t in range(lo, hi):
            mx = max(mx, ki[t])
        lower = min(lower, mx)
    nc = 0
    for t in range(length):
        kv = ki[t]
        cand[nc] = t
        ckey[nc] = kv
        nc += kv >= lower
    thr = kth_largest(ckey, nc, k, hist)
    above = 0
    for i in range(nc):
        above += ckey[i] > thr
    need = k - above
    o = 0
    for i in range(nc):
        kv = ckey[i]
        if kv > thr:
            idx[o] = cand[i]
            o += 1
        elif kv == thr and need > 0:
            need -= 1
            idx[o] = cand[i]
            o += 1

@_jit
def strata(u, e0, ln, k, lo, size, idx):
    """crandk: the position in stratum ``i`` of a chunk of ``ln`` is ``lo_i + min(floor(u_i
    size_i), size_i - 1)`` (float64, as ``ChunkTopKCodec._random_rows`` computes it);
    ``lo``/``size`` hold the strata of the previous chunk, recomputed if ``ln`` changed."""
    last = lo.shape[0] - 1  # holds the ``ln`` the strata are for (``ln`` fixes ``k``)
    if lo[last] != ln:
        for i in range(k):
            lo[i] = (i * ln) // k
            size[i] = ((i + 1) * ln) // k - lo[i]
        lo[last] = ln
    for i in range(k):
        idx[i] = lo[i] + min(np.int64(u[e0 + i] * np.float64(size[i])), size[i] - 1)

@_jit
def encode(x, xi, n, length, k_max, c0, c1, u, bits, vbits, ipay, levels, vpay, fvals):
    """Select, pack indices into ``ipay`` (``bits`` per field; none if ``bits == 0``), levels
    into ``levels`` (chunks x 2 or 1), value codes into ``vpay`` (``vbits`` 2 or 1) or the
    values into ``fvals`` (``vbits == 32``). ``u``: crandk's uniforms by entry (else
    empty). Returns the first chunk holding NaN or inf, or -1."""
    keys = np.empty(length, dtype=np.int32)
    cand = np.empty(length, dtype=np.int64)
    ckey = np.empty(length, dtype=np.int32)
    idx = np.empty(k_max, dtype=np.int64)
    kk = np.empty(k_max, dtype=np.int32)
    hist = np.empty(256, dtype=np.int64)
    rand = u.shape[0] > 0
    slo = np.full(k_max + 1, -1, dtype=np.int64)
    ssize = np.empty(k_max, dtype=np.int64)
    ip = (c0 * k_max * bits) >> 3
    iacc = np.uint64(0)
    inb = 0
    vp = (c0 * k_max * vbits) >> 3
    vacc = np.uint64(0)
    vnb = 0
    for c in range(c0, c1):
        start = c * length
        ln = min(length, n - start)
        k = min(k_max, ln)
        e0 = c * k_max
        ki = xi[start : start + ln]
        xs = x[start : start + ln]
        if rand:
            mx = np.int32(0)
            for t in range(ln):
                mx = max(mx, ki[t] & 0x7FFFFFFF)
            if mx >= 0x7F800000:
                return c
            strata(u, e0, ln, k, slo, ssize, idx)
        else:
            mx = np.int32(0)
            for t in range(ln):
                kv = ki[t] & 0x7FFFFFFF
                keys[t] = kv
                mx = max(mx, kv)
            if mx >= 0x7F800000:
                return c
            select_top(keys, ln, k, idx, cand, ckey, hist)
            for i in range(k):
                iacc |= np.uint64(idx[i]) << np.uint64(inb)
                inb += bits
                while inb >= 8:
                    ipay[ip] = np.uint8(iacc & np.uint64(255))
                    ip += 1
                    iacc >>= np.uint64(8)
                    inb -= 8
        if vbits == 32:
            for i in range(k):
                fvals[e0 + i] = xs[idx[i]]
            continue
        total = 0.0
        for i in range(k):
            kk[i] = ki[idx[i]] & 0x7FFFFFFF
        if vbits == 1:
            for i in range(k):
                total += np.float64(abs(xs[idx[i]]))
            levels[c, 0] = np.float32(total / k)
            for i in range(k):
                vacc |= np.uint64(xs[idx[i]] < 0) << np.uint64(vnb)
                vnb += 1
                if vnb == 8:
                    vpay[vp] = np.uint8(vacc)
                    vp += 1
                    vacc = np.uint64(0)
                    vnb = 0
            continue
        h = (k + 1) // 2
        for i in range(k):
            ckey[i] = kk[i]
        thr = kth_largest(ckey, k, h, hist)
        sh = 0.0
        nh = 0
        for i in range(k):
            mg = np.float64(abs(xs[idx[i]]))
            total += mg
            if kk[i] >= thr:
                sh += mg
                nh += 1
        hi = sh / nh
        nl = k - nh
        lo = (total - sh) / nl if nl > 0 else 0.0
        if lo > hi:
            lo = hi
        if lo < 0.0:
            lo = 0.0
        levels[c, 0] = np.float32(lo)
        levels[c, 1] = np.float32(hi)
        for i in range(k):
            code = np.uint64(xs[idx[i]] < 0) | (np.uint64(kk[i] >= thr) << np.uint64(1))
            vacc |= code << np.uint64(vnb)
            vnb += 2
            if vnb == 8:
                vpay[vp] = np.uint8(vacc)
                vp += 1
                vacc = np.uint64(0)
                vnb = 0
    if inb > 0:
        ipay[ip] = np.uint8(iacc & np.uint64(255))
    if vnb > 0 and vbits != 32:
        vpay[vp] = np.uint8(vacc)
    return -1

@_jit
def unpack_indices(ipay, bits, n, length, k_max, c0, c1, idx):
    """Unpack chunks ``[c0, c1)``'s index fields into ``idx`` (by entry); False if one is
    at or past its chunk's end or not above the previous one in its chunk."""
    ip = (c0 * k_max * bits) >> 3
    acc = np.uint64(0)
    nb = 0
    mask = np.uint64((1 << bits) - 1)
    for c in range(c0, c1):
        ln = min(length, n - c * length)
        k = min(k_max, ln)
        e0 = c * k_max
        prev = -1
        for i in range(k):
            while nb < bits:
                acc |= np.uint64(ipay[ip]) << np.uint64(nb)
                ip += 1
                nb += 8
            v = np.int64(acc & mask)
            acc >>= np.uint64(bits)
            nb -= bits
            if v >= ln or v <= prev:
                return False
            idx[e0 + i] = v
            prev = v
    return True

@_jit
def decode(idx, u, vpay, vbits, levels, fvals, n, length, k_max, c0, c1, out):
    """Write chunks ``[c0, c1)`` of ``out``: zeros, and at the kept indices ``idx`` (by entry;
    crandk: from its uniforms ``u``) the values: ``fvals`` (``vbits == 32``) or the signed
    levels of the codes in ``vpay``."""
    rand = u.shape[0] > 0
    pos = np.empty(k_max if rand else 0, dtype=np.int64)
    slo = np.full(k_max + 1, -1, dtype=np.int64)
    ssize = np.empty(k_max, dtype=np.int64)
    vp = (c0 * k_max * vbits) >> 3
    vnb = 0
    for c in range(c0, c1):
        start = c * length
        ln = min(length, n - start)
        k = min(k_max, ln)
        e0 = c * k_max
        ob = out[start : start + ln]
        lo = np.float32(0.0)
        hi = np.float32(0.0)
        if vbits == 2:
            lo = levels[c, 0]
            hi = levels[c, 1]
        elif vbits == 1:
            hi = levels[c, 0]
        if rand:
            strata(u, e0, ln, k, slo, ssize, pos)
        ob[:] = np.float32(0.0)  # the chunk is in L1 when the values land
        for i in range(k):
            t = pos[i] if rand else idx[e0 + i]
            if vbits == 32:
                v = fvals[e0 + i]
            else:
                code = (vpay[vp] >> vnb) & ((1 << vbits) - 1)
                vnb += vbits
                if vnb == 8:
                    vp += 1
                    vnb = 0
                if vbits == 1:
                    v = -hi if code else hi
                else:
                    mg = hi if code >> 1 else lo
                    v = -mg if code & 1 else mg
            ob[t] = v
