"""The fused Triton NDC kernels against the naive composition.

Without a GPU the kernels run on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``, which
:mod:`nnunetv2_deconver.ops.ndc_triton` reads at each call); the interpreter pays per operation, so the
shapes are tiny. Tolerances: the kernels and the naive composition both accumulate in fp32, in different
orders, over at most R * prod(kernel) <= 500 products per voxel and pass; the measured relative
differences are about 5e-7, the bounds (1e-5 values, 1e-4 gradients, as for the other fast paths) leave
room for the rounding of the recomputed quotients without hiding an off-by-one tap or a missing term
(those give differences of order 1e-1).
"""
import pytest
import torch

from nnunetv2_deconver.network.costs import saved_tensor_bytes
from nnunetv2_deconver.ops import ndc_triton
from nnunetv2_deconver.ops.ndc import NDC, nonnegative_deconvolution
from nnunetv2_deconver.ops.ndc_dispatch import IMPLEMENTATIONS, force_implementation, select_implementation

from helpers.implementations import max_relative_error, run_under_bf16_autocast, run_with_gradients

pytestmark = pytest.mark.skipif(not ndc_triton.triton_available(), reason="Triton is not installed")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled kernels)")

CASES = [  # (spatial, kernel, C, R, iterations, channels-last operands); R = 4 is the layer's default
    ((4, 5, 6), (3, 3, 3), 2, 2, 2, False),
    ((3, 5, 6), (1, 3, 3), 2, 4, 1, True),
    ((3, 4, 5), (5, 5, 5), 1, 2, 1, False),
    ((6, 7), (3, 3), 3, 2, 3, False),
    ((7, 6), (5, 5), 2, 4, 1, True),
    ((9,), (3,), 2, 2, 2, False),
]


@pytest.fixture
def interpreter(monkeypatch):
    """Run the kernels on CPU tensors under Triton's interpreter; count the kernel launches."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    launches = []
    kernel = ndc_triton._kernel

    def counting(name, device_type):
        launches.append(name)
        return kernel(name, device_type)

    monkeypatch.setattr(ndc_triton, "_kernel", counting)
    return launches


def _operands(spatial, kernel, c, r, channels_last=False, seed=0, batch=1, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, c, *spatial, generator=generator)
    source = 0.05 + torch.rand(batch, r * c, *spatial, generator=generator)
    filters = torch.rand(c, r, *kernel, generator=generator)
    grad = torch.randn(batch, r * c, *spatial, generator=generator)
    if channels_last:
        layout = {2: torch.channels_last, 3: torch.channels_last_3d}[len(spatial)]
        x, source = x.contiguous(memory_format=layout), source.contiguous(memory_format=layout)
    return [t.to(dtype).requires_grad_() for t in (x, source, filters)], grad


@pytest.mark.parametrize("spatial,kernel,c,r,iterations,channels_last", CASES)
def test_fused_kernels_match_naive_values_and_gradients(interpreter, spatial, kernel, c, r, iterations,
                                                         channels_last):
    operands, grad = _operands(spatial, kernel, c, r, channels_last)
    expected, expected_grads = run_with_gradients("naive", operands, grad, c, iterations)
    got, got_grads = run_with_gradients("triton", operands, grad, c, iterations)
    assert "update_kernel" in interpreter and "update_backward_kernel" in interpreter  # the fused path ran
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert max_relative_error(got, expected) <= 1e-5
    for name, g, ref in zip(("x", "source", "filters"), got_grads, expected_grads):
        assert max_relative_error(g, ref) <= 1e-4, name
    if channels_last:
        layout = {4: torch.channels_last, 5: torch.channels_last_3d}[got.dim()]
        assert got.is_contiguous(memory_format=layout)
        assert operands[1].grad.is_contiguous(memory_format=layout)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_read_in_place_and_computed_in_fp32(interpreter, dtype):
    operands, grad = _operands((5, 6), (3, 3), 2, 2, dtype=dtype)
    # naive upcasts the same values to fp32
    expected, expected_grads = run_with_gradients("naive", operands, grad, 2, 2)
    got, got_grads = run_with_gradients("triton", operands, grad, 2, 2)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert max_relative_error(got, expected) <= 1e-5
    for g, ref in zip(got_grads, expected_grads):
        assert g.dtype == dtype  # gradients come back in the inputs' dtype: one rounding of the fp32 value
        assert max_relative_error(g, ref) <= 2 ** -7


def test_autocast_output_is_fp32_like_naive(interpreter):
    operands, grad = _operands((5, 4), (3, 3), 2, 4)
    results = {name: run_under_bf16_autocast(name, operands, grad, 2) for name in ("naive", "triton")}
    assert max_relative_error(results["triton"][0], results["naive"][0]) <= 1e-5
    for got, ref in zip(results["triton"][1], results["naive"][1]):
        assert max_relative_error(got, ref) <= 1e-4


def test_saves_what_recompute_saves(interpreter):
    operands, _ = _operands((5, 4), (3, 3), 2, 4)
    for iterations in (1, 3):
        saved = saved_tensor_bytes(lambda: nonnegative_deconvolution(*operands, 2, iterations=iterations,
                                                                     implementation="triton"),
                                   exclude=operands[2:3])
        x, source = operands[:2]
        assert saved == x.nbytes + source.nbytes + x.nbytes  # x, S0 and K(S0) in fp32
    assert "update_kernel" in interpreter


@pytest.mark.parametrize("groups", [1, 2])
def test_other_group_counts_take_the_recompute_path(interpreter, groups):
    generator = torch.Generator().manual_seed(1)
    x, source = torch.rand(2, 4, 5, 6, generator=generator), torch.rand(2, 8, 5, 6, generator=generator)
    filters = torch.rand(4, 8 // groups, 3, 3, generator=generator)
    operands = [t.requires_grad_() for t in (x, source, filters)]
    grad = torch.randn(2, 8, 5, 6, generator=generator)
    expected, expected_grads = run_with_gradients("recompute", operands, grad, groups, 2)
    got, got_grads = run_with_gradients("triton", operands, grad, groups, 2)
    assert interpreter == []
    assert torch.equal(got, expected) and all(torch.equal(g, e) for g, e in zip(got_grads, expected_grads))


def test_cpu_tensors_without_the_interpreter_take_the_recompute_path(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    operands, grad = _operands((5, 6), (3, 3), 2, 2)
    assert torch.equal(run_with_gradients("triton", operands, grad, 2)[0],
                       run_with_gradients("recompute", operands, grad, 2)[0])


def test_missing_triton_is_a_clear_error_and_dispatch_never_picks_it(monkeypatch):
    monkeypatch.setattr(ndc_triton, "TRITON_IMPORT_ERROR", ImportError("No module named 'triton'"))
    operands, _ = _operands((5, 6), (3, 3), 2, 2)
    with pytest.raises(ImportError, match="pip install triton"):
        nonnegative_deconvolution(*operands, 2, implementation="triton")
    for device_type in ("cpu", "cuda"):
        for shape in ((2, 32, 64, 64, 64), (2, 320, 4, 4, 4), (8, 64, 256, 256)):
            assert select_implementation(torch.empty(shape, device="meta"), device_type=device_type) != "triton"


def test_triton_is_available_by_name_and_by_force(interpreter):
    assert "triton" in IMPLEMENTATIONS
    torch.manual_seed(0)
    layer = NDC(2, (3, 3), ratio=2)
    x = torch.rand(1, 2, 5, 6)
    with force_implementation("triton"):
        assert select_implementation(x) == "triton"
        layer(x).sum().backward()
    assert "update_kernel" in interpreter and "adjoint_accumulate_kernel" in interpreter


def test_double_backward_is_refused_clearly(interpreter):
    operands, _ = _operands((6,), (3,), 2, 2)
    out = nonnegative_deconvolution(*operands, 2, implementation="triton")
    with pytest.raises(RuntimeError, match="double backward.*implementation='naive'"):
        torch.autograd.grad(out.sum(), operands[1], create_graph=True)


def test_layer_under_torch_compile_is_one_graph(interpreter):
    torch.manual_seed(0)
    layer = NDC(2, (3, 3), ratio=2, iterations=2)
    x = torch.rand(1, 2, 6, 5, requires_grad=True)
    with force_implementation("naive"):
        expected = layer(x)
        expected.sum().backward()
    expected_grad = layer.filters.grad.clone()
    layer.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)  # fullgraph: a break is an error
    with force_implementation("triton"):
        got = compiled(x)
        got.sum().backward()
    assert "update_kernel" in interpreter and "update_backward_kernel" in interpreter
    assert max_relative_error(got.detach(), expected.detach()) <= 1e-5
    assert max_relative_error(layer.filters.grad, expected_grad) <= 1e-4


def test_kernels_compile_for_an_h100_without_a_gpu():
    """The interpreter runs the kernels as Python; this runs Triton's compiler on them (to sm_90 machine
    code), which rejects what only compiled kernels refuse (globals, type mismatches, non-constexpr shapes)."""
    import inspect
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from nnunetv2_deconver.ops import ndc_triton_kernels

    pointers = {"src", "filt", "out", "x", "rec", "grad", "grad_d", "grad_q", "grad_n", "partial", "grad_r"}
    constants = {"KD": 1, "KH": 3, "KW": 3, "ROWS": 4, "BLOCK": 256, "ACCUMULATE": True}
    for name in ("correlate_kernel", "update_kernel", "update_backward_kernel", "adjoint_accumulate_kernel"):
        kernel = triton.jit(getattr(ndc_triton_kernels, name))
        names = list(inspect.signature(kernel.fn).parameters)
        signature = {arg: "constexpr" if arg in constants else ("*fp16" if arg in ("x", "src") else "*fp32")
                     if arg in pointers else "fp32" if arg == "eps" else "i64" if arg[-2:] in
                     ("_b", "_c", "_d", "_h", "_w") else "i32" for arg in names}
        source = ASTSource(fn=kernel, signature=signature,
                           constexprs={(names.index(arg),): value for arg, value in constants.items() if arg in names})
        try:
            compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
        except RuntimeError as error:  # no ptxas: the toolchain, not the kernel
            if "ptxas" in str(error):
                pytest.skip(f"Triton's CUDA toolchain is unavailable: {error}")
            raise
        assert compiled.asm["cubin"], name


@CUDA
@pytest.mark.parametrize("spatial,kernel,c,r,iterations,channels_last", CASES)
def test_compiled_kernels_on_gpu_match_naive(spatial, kernel, c, r, iterations, channels_last):
    operands, grad = _operands(spatial, kernel, c, r, channels_last)
    operands = [t.detach().cuda().requires_grad_() for t in operands]
    expected, expected_grads = run_with_gradients("naive", operands, grad.cuda(), c, iterations)
    got, got_grads = run_with_gradients("triton", operands, grad.cuda(), c, iterations)
    assert max_relative_error(got, expected) <= 1e-5
    assert all(max_relative_error(g, ref) <= 1e-4 for g, ref in zip(got_grads, expected_grads))


@CUDA
def test_gpu_layer_under_fp16_autocast_and_inductor_is_finite_and_matches_naive():
    torch.manual_seed(0)
    layer = NDC(16, (3, 3, 3)).cuda()
    x = torch.rand(2, 16, 24, 24, 24, device="cuda")
    results = {}
    for name in ("naive", "triton"):
        layer.zero_grad()
        run = torch.compile(layer) if name == "triton" else layer
        with force_implementation(name), torch.autocast("cuda", dtype=torch.float16):
            out = run(x)
        out.float().square().mean().backward()
        results[name] = out.detach(), layer.filters.grad.clone()
    assert torch.isfinite(results["triton"][0]).all() and torch.isfinite(results["triton"][1]).all()
    assert max_relative_error(results["triton"][0], results["naive"][0]) <= 1e-3
    assert max_relative_error(results["triton"][1], results["naive"][1]) <= 1e-2
