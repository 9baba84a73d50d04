# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cython kernel of the shelf packer: the same steps as ``reference.py``, in C.

Identical results to :func:`balsam.service.packing.reference.pack` (checked on random inputs by
``tests/test_packer.py``). Differences are internal only: the jobs are ordered by a stable LSD
radix sort on the keys ``(max height - height, max width - width)`` (the reference uses Python's
stable sort on equivalent keys; the order, with the index as the last key, is total, so both
give the same sequence), and the segment trees and shelf records live in C arrays.
"""
from cpython.array cimport array, clone
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from balsam.service.packing.reference import PackResult, bad_element, check_scalars

ctypedef long long i64
ctypedef unsigned long long u64

cdef array _Q = array("q")
cdef int _INITIAL_TREE_SIZE = 16
cdef int _MAX_DIGIT_BITS = 16


cdef struct Tree:
    i64 *v          # 2 * size entries; leaves at [size, 2 * size)
    Py_ssize_t size


cdef int tree_init(Tree *t, Py_ssize_t size) except -1:
    t.v = <i64 *>malloc(2 * size * sizeof(i64))
    if t.v == NULL:
        raise MemoryError()
    memset(t.v, 0, 2 * size * sizeof(i64))
    t.size = size
    return 0


cdef int tree_grow(Tree *t) except -1:
    """Double the number of leaves, keeping the old ones (new leaves are 0)."""
    cdef Py_ssize_t n = 2 * t.size, k
    cdef i64 *v = <i64 *>malloc(2 * n * sizeof(i64))
    cdef i64 a, b
    if v == NULL:
        raise MemoryError()
    memset(v, 0, 2 * n * sizeof(i64))
    memcpy(v + n, t.v + t.size, t.size * sizeof(i64))
    for k in range(n - 1, 0, -1):
        a = v[2 * k]
        b = v[2 * k + 1]
        v[k] = a if a >= b else b
    free(t.v)
    t.v = v
    t.size = n
    return 0


cdef inline Py_ssize_t tree_first(Tree *t, i64 need) noexcept nogil:
    """Index of the first leaf with value >= need, or -1."""
    cdef Py_ssize_t k = 1
    if t.v[1] < need:
        return -1
    while k < t.size:
        k *= 2
        if t.v[k] < need:
            k += 1
    return k - t.size


cdef inline void tree_set(Tree *t, Py_ssize_t i, i64 value) noexcept nogil:
    cdef Py_ssize_t k = i + t.size
    cdef i64 a, b, m
    t.v[k] = value
    k >>= 1
    while k:
        a = t.v[2 * k]
        b = t.v[2 * k + 1]
        m = a if a >= b else b
        if t.v[k] == m:
            break
        t.v[k] = m
        k >>= 1


cdef int bit_length(i64 v) noexcept nogil:
    cdef int bits = 0
    while v:
        bits += 1
        v >>= 1
    return bits


cdef inline u64 sort_key(u64 item, int lo, const i64 *vals, i64 top) noexcept nogil:
    if vals == NULL:
        return item >> lo
    return <u64>(top - vals[item])


cdef u64 *radix(u64 *a, u64 *tmp, Py_ssize_t m, int lo, int bits, const i64 *vals, i64 top,
                Py_ssize_t *counts) noexcept nogil:
    """Stable sort of ``a[:m]``, ascending, by a key of ``bits`` bits: ``a[k] >> lo`` if ``vals``
    is NULL (keys packed into the items), else ``top - vals[a[k]]`` (items are job indices).

    Least-significant-digit radix sort, digits of at most 16 bits; a pass whose digit is the
    same for every item is skipped. Returns whichever of ``a`` / ``tmp`` holds the result.
    """
    cdef int passes = (bits + _MAX_DIGIT_BITS - 1) // _MAX_DIGIT_BITS
    cdef int digit, shift, p
    cdef Py_ssize_t k, nb, total, c
    cdef u64 mask
    cdef u64 *swap
    if passes == 0 or m == 0:
        return a
    digit = (bits + passes - 1) // passes
    nb = (<Py_ssize_t>1) << digit
    mask = nb - 1
    for p in range(passes):
        shift = p * digit
        memset(counts, 0, nb * sizeof(Py_ssize_t))
        for k in range(m):
            counts[(sort_key(a[k], lo, vals, top) >> shift) & mask] += 1
        if counts[(sort_key(a[0], lo, vals, top) >> shift) & mask] == m:
            continue
        total = 0
        for k in range(nb):
            c = counts[k]
            counts[k] = total
            total += c
        for k in range(m):
            c = (sort_key(a[k], lo, vals, top) >> shift) & mask
            tmp[counts[c]] = a[k]
            counts[c] += 1
        swap = a
        a = tmp
        tmp = swap
    return a


cdef struct Order:
    u64 *items      # sorted: packed (hkey, wkey, index) if packed, else job indices
    bint packed
    int ib, wb      # bits of the index and width-key fields when packed
    i64 wmax, hmax  # key = max - value


cdef int sort_jobs(Order *o, u64 *a, u64 *tmp, Py_ssize_t *counts, Py_ssize_t n,
                   const i64 *wid, const i64 *hei, i64 W, i64 H) except -1:
    """Put the jobs that fit a box in the order (height desc, width desc, index asc).

    When the index and both key ranges fit in 63 bits, each item packs
    ``(hmax - h) << (ib + wb) | (wmax - w) << ib | index`` and one radix sort of the packed
    keys orders them with sequential memory access only; otherwise job indices are sorted by
    width key, then (stably) by height key, fetching the values by index.
    """
    cdef Py_ssize_t i, m = 0
    cdef i64 wmin = W, hmin = H, wmax = 1, hmax = 1
    cdef int hb
    cdef u64 *first
    for i in range(n):
        if wid[i] <= W and hei[i] <= H:
            a[m] = i
            m += 1
            if wid[i] < wmin: wmin = wid[i]
            if wid[i] > wmax: wmax = wid[i]
            if hei[i] < hmin: hmin = hei[i]
            if hei[i] > hmax: hmax = hei[i]
    o.wmax = wmax
    o.hmax = hmax
    o.ib = bit_length(n - 1) if n > 1 else 0
    o.wb = bit_length(wmax - wmin) if m else 0
    hb = bit_length(hmax - hmin) if m else 0
    o.packed = o.ib + o.wb + hb <= 63
    if o.packed:
        for i in range(m):
            a[i] = ((<u64>(hmax - hei[a[i]]) << (o.ib + o.wb))
                    | (<u64>(wmax - wid[a[i]]) << o.ib) | a[i])
        o.items = radix(a, tmp, m, o.ib, o.wb + hb, NULL, 0, counts)
    else:
        first = radix(a, tmp, m, 0, o.wb, wid, wmax, counts)
        o.items = radix(first, tmp if first == a else a, m, 0, hb, hei, hmax, counts)
    return m


cdef class _Work:
    """C buffers of one pack() call, freed when it ends (also on errors)."""
    cdef u64 *order
    cdef u64 *tmp
    cdef Py_ssize_t *counts
    cdef Tree shelves
    cdef Tree boxes
    cdef i64 *shelf_box
    cdef i64 *shelf_y
    cdef i64 *shelf_fill
    cdef i64 *used_width
    cdef i64 *used_height

    def __dealloc__(self):
        free(self.order)
        free(self.tmp)
        free(self.counts)
        free(self.shelves.v)
        free(self.boxes.v)
        free(self.shelf_box)
        free(self.shelf_y)
        free(self.shelf_fill)
        free(self.used_width)
        free(self.used_height)


cdef i64 *alloc(Py_ssize_t n) except NULL:
    cdef i64 *p = <i64 *>malloc((n if n > 0 else 1) * sizeof(i64))
    if p == NULL:
        raise MemoryError()
    return p


cdef int grow_shelf_records(_Work w, Py_ssize_t old, Py_ssize_t n) except -1:
    """Re-allocate the per-shelf records from ``old`` to ``n`` entries, keeping their values."""
    cdef i64 *a = alloc(n)
    cdef i64 *b = alloc(n)
    cdef i64 *c = alloc(n)
    memcpy(a, w.shelf_box, old * sizeof(i64))
    memcpy(b, w.shelf_y, old * sizeof(i64))
    memcpy(c, w.shelf_fill, old * sizeof(i64))
    free(w.shelf_box)
    free(w.shelf_y)
    free(w.shelf_fill)
    w.shelf_box = a
    w.shelf_y = b
    w.shelf_fill = c
    return 0


cdef array int64_array(const i64 *src, Py_ssize_t n):
    cdef array out = clone(_Q, n, False)
    if n:
        memcpy(out.data.as_longlongs, src, n * sizeof(i64))
    return out


def pack(const i64[::1] widths, const i64[::1] heights, box_width, box_height, max_boxes=None):
    """Pack jobs into boxes; the contract is in :mod:`balsam.service.packing`. ``widths`` and
    ``heights`` must be C-contiguous int64 buffers (e.g. ``array.array('q')``)."""
    cdef Py_ssize_t n = widths.shape[0], i, k, m, s, b, j
    cdef Py_ssize_t limit = check_scalars(n, heights.shape[0], box_width, box_height, max_boxes)
    cdef i64 W = box_width, H = box_height, wj, hj, xj, yj
    cdef Py_ssize_t nshelves = 0, nboxes = 0
    cdef _Work w = _Work()
    cdef array box_of = clone(_Q, n, False), xs = clone(_Q, n, False), ys = clone(_Q, n, False)
    cdef i64 *pbox = box_of.data.as_longlongs
    cdef i64 *px = xs.data.as_longlongs
    cdef i64 *py = ys.data.as_longlongs
    cdef const i64 *wid = &widths[0] if n else NULL
    cdef const i64 *hei = &heights[0] if n else NULL
    cdef Order o
    cdef u64 v, imask, wmask
    cdef int hshift
    for i in range(n):
        if wid[i] < 1:
            raise bad_element("widths", i, wid[i])
        if hei[i] < 1:
            raise bad_element("heights", i, hei[i])
        pbox[i] = -1
        px[i] = -1
        py[i] = -1

    w.order = <u64 *>alloc(n)
    w.tmp = <u64 *>alloc(n)
    w.counts = <Py_ssize_t *>malloc(((<Py_ssize_t>1) << _MAX_DIGIT_BITS) * sizeof(Py_ssize_t))
    if w.counts == NULL:
        raise MemoryError()
    m = sort_jobs(&o, w.order, w.tmp, w.counts, n, wid, hei, W, H)
    imask = ((<u64>1) << o.ib) - 1
    wmask = ((<u64>1) << o.wb) - 1
    hshift = o.ib + o.wb

    tree_init(&w.shelves, _INITIAL_TREE_SIZE)
    tree_init(&w.boxes, _INITIAL_TREE_SIZE)
    w.shelf_box = alloc(_INITIAL_TREE_SIZE)
    w.shelf_y = alloc(_INITIAL_TREE_SIZE)
    w.shelf_fill = alloc(_INITIAL_TREE_SIZE)
    w.used_width = alloc(limit)
    w.used_height = alloc(limit)

    for k in range(m):
        v = o.items[k]
        if o.packed:
            j = v & imask
            wj = o.wmax - <i64>((v >> o.ib) & wmask)
            hj = o.hmax - <i64>(v >> hshift)
        else:
            j = v
            wj = wid[j]
            hj = hei[j]
        s = tree_first(&w.shelves, wj)
        if s >= 0:
            b = w.shelf_box[s]
            xj = w.shelf_fill[s]
            yj = w.shelf_y[s]
            w.shelf_fill[s] = xj + wj
            tree_set(&w.shelves, s, W - xj - wj)
        else:
            b = tree_first(&w.boxes, hj)
            if b < 0:
                b = nboxes
                if b == limit:
                    continue
                if b == w.boxes.size:
                    tree_grow(&w.boxes)
                w.used_width[b] = 0
                w.used_height[b] = 0
                nboxes += 1
            xj = 0
            yj = w.used_height[b]
            w.used_height[b] = yj + hj
            tree_set(&w.boxes, b, H - yj - hj)
            s = nshelves
            if s == w.shelves.size:
                grow_shelf_records(w, s, 2 * s)
                tree_grow(&w.shelves)
            w.shelf_box[s] = b
            w.shelf_y[s] = yj
            w.shelf_fill[s] = wj
            nshelves += 1
            tree_set(&w.shelves, s, W - wj)
        if xj + wj > w.used_width[b]:
            w.used_width[b] = xj + wj
        pbox[j] = b
        px[j] = xj
        py[j] = yj

    return PackResult(box_of, xs, ys, nboxes, int64_array(w.used_width, nboxes),
                      int64_array(w.used_height, nboxes))
