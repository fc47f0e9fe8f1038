#include "kiln/train/estimate.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <sstream>

#include "kiln/core/error.h"

namespace kiln {

namespace {

using Precision = EstimateInput::Precision;
using Recompute = EstimateInput::Recompute;
using Accounting = EstimateInput::Accounting;

constexpr double kGiB = double(1ull << 30);
constexpr double kDay = 86400.0;

// A Llama block stack (RMSNorm, SwiGLU, RoPE, untied head, 32000-token vocabulary).
ModelConfig llama_shape(int C, int L, int H, int K, int F, int max_positions) {
  ModelConfig c;
  c.arch = Arch::llama;
  c.vocab_size = 32000;
  c.hidden = C;
  c.layers = L;
  c.heads = H;
  c.kv_heads = K;
  c.head_dim = C / H;
  c.intermediate = F;
  c.max_positions = max_positions;
  c.tie_embeddings = false;
  return c;
}

// Llama's SwiGLU width: 2/3 of 4C, rounded up to a multiple of 256 (4096 -> 11008).
int llama_ffn(int C) {
  return (8 * C / 3 + 255) / 256 * 256;
}

std::string lower(std::string s) {
  for (char& ch : s) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

std::string gib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / kGiB);
  return buf;
}

std::string layout_str(const EstimateInput& in) {
  return str("dp=", in.dp, " tp=", in.tp, " pp=", in.pp, " zero=", in.zero,
             in.sequence_parallel ? " sp" : "");
}

// Divisors of n, for "choose tp in {1, 2, 4}" messages.
std::string divisors(int n) {
  std::string s;
  for (int d = 1; d <= n; ++d)
    if (n % d == 0) s += (s.empty() ? "" : ", ") + std::to_string(d);
  return "{" + s + "}";
}

// Activation bytes of one transformer layer for one micro-batch, per tensor-parallel rank
// (Korthikanti et al. 2022, Table 2). With 16-bit activations (e = 2) and 1-byte dropout masks:
//   none      s·b·h·(10 + 24/t + 5·a·s/(h·t))     (sequence parallel: 10 -> 10/t)
//   selective s·b·h·(10 + 24/t)                   (the attention core a·s² terms recomputed)
//   full      s·b·h·2                             (only the layer input kept)
// The 10 is 4e + 2 (norm inputs 2e, projection inputs 2e, two dropout masks), the 24 is 12e
// (q, k, v, attention output, the 4h MLP), the 5 is 2e + 1 (scores, softmax, mask); fp32
// (e = 4) doubles every term but the masks.
double layer_activation_bytes(const EstimateInput& in, Recompute r) {
  const double s = in.seq, b = in.micro_batch, h = in.model.hidden, a = in.model.heads, t = in.tp;
  const double e = in.precision == Precision::fp32 ? 4.0 : 2.0;
  const double sp = in.sequence_parallel ? t : 1.0;
  const double sbh = s * b * h;
  switch (r) {
    case Recompute::full:
      return sbh * e / sp;
    case Recompute::selective:
      return sbh * ((4 * e + 2) / sp + 12 * e / t);
    case Recompute::none:
      break;
  }
  return sbh * ((4 * e + 2) / sp + 12 * e / t + (2 * e + 1) * a * s / (h * t));
}

// Checks the input and fills in what was left to default: dp = gpus/(tp*pp) when 0, the global
// batch, D = 20·N. The model-split checks come first: they are the likelier mistake.
void resolve(EstimateInput& in) {
  const ModelConfig& c = in.model;
  c.validate("estimate");
  KILN_CHECK(in.gpus >= 1, "estimate", "--gpus must be at least 1, got ", in.gpus);
  KILN_CHECK(in.gpu_memory > 0, "estimate", "--gpu-memory must be positive, got ", in.gpu_memory);
  KILN_CHECK(in.peak_tflops > 0, "estimate", "--peak-tflops must be positive, got ",
             in.peak_tflops);
  KILN_CHECK(in.mfu > 0 && in.mfu <= 1, "estimate", "--mfu must be in (0, 1], got ", in.mfu,
             " (0.4 is typical for a well-tuned Megatron run)");
  KILN_CHECK(in.micro_batch >= 1 && in.seq >= 1 && in.grad_accum >= 1, "estimate",
             "--micro-batch, --seq and --grad-accum must be at least 1, got ", in.micro_batch, ", ",
             in.seq, ", ", in.grad_accum);
  KILN_CHECK(in.tokens >= 0, "estimate", "--tokens must be positive, got ", in.tokens);
  KILN_CHECK(in.params_override >= 0, "estimate", "--params must be positive");
  KILN_CHECK(in.global_batch >= 0, "estimate", "--global-batch must be positive");
  KILN_CHECK(in.zero >= 0 && in.zero <= 3, "estimate", "--zero must be 0, 1, 2 or 3, got ",
             in.zero);
  KILN_CHECK(in.dp >= 0 && in.tp >= 1 && in.pp >= 1, "estimate",
             "dp, tp and pp must be at least 1, got dp=", in.dp, " tp=", in.tp, " pp=", in.pp);
  KILN_CHECK(c.heads % in.tp == 0 && c.kv_heads % in.tp == 0, "estimate", "tp=", in.tp,
             " must divide the ", c.heads, " attention heads and ", c.kv_heads,
             " kv heads; choose tp in ", divisors(std::gcd(c.heads, c.kv_heads)));
  KILN_CHECK(c.intermediate % in.tp == 0, "estimate", "tp=", in.tp, " must divide the MLP width ",
             c.intermediate, "; choose tp in ",
             divisors(std::gcd(std::gcd(c.heads, c.kv_heads), c.intermediate)));
  KILN_CHECK(c.layers % in.pp == 0, "estimate", "pp=", in.pp, " must divide the ", c.layers,
             " layers; choose pp in ", divisors(c.layers));
  const int64_t mp = int64_t(in.tp) * in.pp;
  if (in.dp == 0) {
    KILN_CHECK(in.gpus % mp == 0, "estimate", "tp*pp = ", in.tp, "*", in.pp, " = ", mp,
               " does not divide --gpus ", in.gpus, "; choose tp and pp whose product does");
    in.dp = int(in.gpus / mp);
  }
  KILN_CHECK(in.dp * mp == in.gpus, "estimate", "dp*tp*pp = ", in.dp, "*", in.tp, "*", in.pp, " = ",
             in.dp * mp, " but --gpus is ", in.gpus,
             "; leave --dp out to use dp = gpus/(tp*pp), or run with --suggest");
  const int64_t per_step = int64_t(in.micro_batch) * in.dp;
  if (in.global_batch == 0) in.global_batch = per_step * in.grad_accum;
  KILN_CHECK(in.global_batch % per_step == 0, "estimate", "--global-batch ", in.global_batch,
             " is not a multiple of micro-batch*dp = ", per_step,
             "; use a multiple, or leave it out to use --grad-accum");
  if (in.kiln_cpu) {
    KILN_CHECK(in.gpus == 1 && in.zero == 0, "estimate",
               "--kiln-cpu is one process: use --gpus 1 (no dp/tp/pp, no ZeRO)");
    KILN_CHECK(in.precision == Precision::fp32, "estimate",
               "kiln's CPU trainer is fp32; use --precision fp32 with --kiln-cpu");
    KILN_CHECK(in.recompute == Recompute::none, "estimate",
               "kiln's CPU trainer keeps every activation; use --recompute none with --kiln-cpu");
    KILN_CHECK(in.params_override == 0, "estimate",
               "--params does not apply to --kiln-cpu: the memory is counted from the shapes");
  }
}

}  // namespace

ModelConfig estimate_model(const std::string& spec) {
  const std::string s = lower(spec);
  if (s == "125m") return llama_shape(768, 12, 12, 12, llama_ffn(768), 2048);
  if (s == "350m") return llama_shape(1024, 24, 16, 16, llama_ffn(1024), 2048);
  if (s == "1.3b") return llama_shape(2048, 24, 16, 16, llama_ffn(2048), 2048);
  if (s == "7b") return llama_shape(4096, 32, 32, 32, 11008, 4096);
  if (s == "13b") return llama_shape(5120, 40, 40, 40, 13824, 4096);
  if (s == "70b") return llama_shape(8192, 80, 64, 8, 28672, 4096);
  if (s == "8x7b") {  // Mixtral 8x7B: 8 experts of Mistral 7B's MLP, 2 per token
    ModelConfig c = llama_shape(4096, 32, 32, 8, 14336, 32768);
    c.moe.experts = 8;
    c.moe.experts_per_tok = 2;
    return c;
  }
  KILN_CHECK(std::filesystem::exists(spec), "estimate", "--model '", spec,
             "' is neither a named size (125m, 350m, 1.3b, 7b, 13b, 70b, 8x7b) nor a ",
             "config.json file");
  return load_model_config(spec);
}

MemoryBytes estimate_kiln_cpu_memory(const ModelConfig& c, int B, int T, const TrainOptions& opt) {
  // Mirrors TrainState's constructor (model/transformer.cpp), in floats per token row N = B·T.
  const bool gpt2 = c.arch == Arch::gpt2;
  const double N = double(B) * T, C = c.hidden, F = c.intermediate, D = c.head_dim, H = c.heads;
  const double HD = H * D, QKV = (H + 2.0 * c.kv_heads) * D, UP = gpt2 ? F : 2 * F;
  const double P = double(c.num_params());
  // Per layer: x_in, ln1, x_mid, ln2 (4C), qkv, att, lse (H per token), up, act, and the norm
  // statistics (rstd; GPT-2's LayerNorm also keeps the mean).
  double per_layer = 4 * C + QKV + HD + H + UP + F + (gpt2 ? 4 : 2);
  // MoE: up and act hold k permuted rows per token, plus the experts' outputs (k C) and the
  // routing (probabilities E, log-sum-exp, experts, weights and permuted rows k each).
  const double k = c.moe.experts_per_tok, E = c.moe.experts;
  if (c.moe.enabled()) per_layer += (k - 1) * (UP + F) + k * C + E + 1 + 3 * k;
  // Recomputing layers keep less: selective drops the attention output and lse (HD + H), full
  // keeps only x_in (C); one shared scratch layer holds what they rebuild in backward.
  const int rl = opt.recompute == Recompute::none ? 0
                 : opt.recompute_layers < 0       ? c.layers
                                                  : opt.recompute_layers;
  const double kept = opt.recompute == Recompute::full ? C : per_layer - (HD + H);
  const double scratch = opt.recompute == Recompute::none   ? 0
                         : opt.recompute == Recompute::full ? per_layer - C
                                                            : HD + H;
  // Once: x_out, lnf, dlnf, and the backward's dres, dln (5C), datt, dqkv, dup, dact, rstdf/meanf.
  double once = 5 * C + HD + QKV + UP + F + (gpt2 ? 2 : 1);
  // MoE: dup and dact for k rows per token; the permuted input, its gradient and the outputs'
  // gradient (3 k C); the router's logits and their gradient (2 E); d weight (k).
  if (c.moe.enabled()) once += (k - 1) * (UP + F) + 3 * k * C + 2 * E + k;
  MemoryBytes m;
  m.weights = 4 * P;
  m.grads = 4 * P;
  m.optimizer = 8 * P;  // AdamW m and v
  m.activations = 4 * N * ((c.layers - rl) * per_layer + rl * kept + (rl ? scratch : 0) + once) +
                  8 * N;  // + positions, token losses
  // Low-precision weight copies: bf16 (2 bytes) or fp16 values kept in fp32 (4 bytes).
  if (opt.precision == Precision::bf16) m.weights += 2 * P;
  if (opt.precision == Precision::fp16) m.weights += 4 * P;
  if (!gpt2) m.activations += 4.0 * T * D;  // RoPE cos and sin (T, D/2)
  // The fused LM head keeps one chunk of logits: rows = clamp(2^21 / V, 32, 256)
  // (ops/cpu/cross_entropy.cpp chunk_rows), at most N.
  const double rows = std::clamp((1 << 21) / std::max(c.vocab_size, 1), 32, 256);
  m.logits = 4 * std::min(rows, N) * c.vocab_size;
  return m;
}

StepFlops step_flops(const ModelConfig& c, double N, double seqs, double T, Recompute recompute) {
  const double attn = double(c.layers) * T * T * double(c.heads) * c.head_dim * seqs;
  const double tokens = seqs * T;
  StepFlops f;
  f.matmul = 6.0 * N * tokens;
  f.attention = 12.0 * attn;
  if (recompute == Recompute::full) f.recompute = 2.0 * N * tokens + 4 * attn;
  if (recompute == Recompute::selective) f.recompute = 4.0 * attn;
  return f;
}

Estimate estimate(const EstimateInput& in_) {
  EstimateInput in = in_;
  resolve(in);
  const ModelConfig& c = in.model;
  Estimate e;
  const int64_t exact = c.num_params();
  e.params = in.params_override > 0 ? in.params_override : exact;
  const double N = double(e.params), scale = N / double(exact);
  // FLOPs follow the parameters a token uses (MoE: the experts it is routed to); memory holds
  // them all.
  e.active_params = int64_t(std::llround(double(c.active_params()) * scale));
  const double N_active = double(e.active_params);
  if (in.tokens == 0) in.tokens = 20.0 * N;  // Chinchilla: 20 tokens per parameter
  e.micro_batches = int(in.global_batch / (int64_t(in.micro_batch) * in.dp));
  const int m = e.micro_batches, p = in.pp, t = in.tp;

  if (in.kiln_cpu) {
    e.rank_params = e.params;
    e.bytes_per_param[0] = e.bytes_per_param[1] = 4;
    e.bytes_per_param[2] = 8;
    e.memory = estimate_kiln_cpu_memory(c, in.micro_batch, in.seq);
  } else {
    // Bytes per parameter of the model states before sharding: weights, grads, optimizer.
    double* bpp = e.bytes_per_param;
    if (in.accounting == Accounting::seed) {
      bpp[0] = 2, bpp[1] = 2, bpp[2] = 4;
    } else if (in.precision == Precision::fp32) {
      bpp[0] = 4, bpp[1] = 4, bpp[2] = 8;  // Adam m, v
    } else {
      bpp[0] = 2, bpp[1] = 2, bpp[2] = 12;  // fp32 master + Adam m, v
    }
    // Parameters per rank: the layers split over pp stages and every matrix over tp (norm weights
    // are replicated but negligible); the embedding sits on the first stage and the LM head on
    // the last (with pp > 1 a tied head is a second copy there, as in Megatron).
    ModelConfig no_layers = c;
    no_layers.layers = 0;
    const double outside = double(no_layers.num_params());
    const double head = double(c.vocab_size) * c.hidden;
    const double embed = head + (c.arch == Arch::gpt2 ? double(c.max_positions) * c.hidden : 0);
    const double tail = outside - embed - (c.tie_embeddings ? 0.0 : head);  // the final norm
    const double stage_layers = (double(exact) - outside) / p;
    const double first = p == 1 ? double(exact) / t : (stage_layers + embed) / t;
    const double last = p == 1 ? first : (stage_layers + tail + head) / t;

    // Activations: with 1F1B the first stage holds min(p, m) micro-batches of its L/p layers, the
    // last stage one micro-batch plus the logits (fp32 for the loss, vocab-parallel over tp).
    // Recomputation needs one layer's worth rematerialized during its backward.
    const int Ls = c.layers / p;
    double work = 0;
    if (in.recompute == Recompute::full) work = layer_activation_bytes(in, Recompute::none);
    if (in.recompute == Recompute::selective) {
      work = layer_activation_bytes(in, Recompute::none) -
             layer_activation_bytes(in, Recompute::selective);
    }
    const double per_layer = layer_activation_bytes(in, in.recompute);
    const double logits = 4.0 * in.seq * in.micro_batch * c.vocab_size / t;

    auto stage = [&](double params, int in_flight, bool has_logits) {
      MemoryBytes mb;
      params *= scale;
      mb.weights = params * bpp[0] / (in.zero >= 3 ? in.dp : 1);
      mb.grads = params * bpp[1] / (in.zero >= 2 ? in.dp : 1);
      mb.optimizer = params * bpp[2] / (in.zero >= 1 ? in.dp : 1);
      mb.activations = per_layer * Ls * in_flight + work;
      mb.logits = has_logits ? logits : 0;
      return mb;
    };
    MemoryBytes a = stage(first, std::min(p, m), p == 1);
    MemoryBytes b = stage(last, 1, true);
    const bool first_heavier = p == 1 || a.total() >= b.total();
    e.memory = first_heavier ? a : b;
    e.rank_params = int64_t(std::llround((first_heavier ? first : last) * scale));
  }
  e.fits = e.memory.total() <= in.gpu_memory;

  const StepFlops f = step_flops(c, N_active, double(in.global_batch), in.seq, in.recompute);
  e.tokens_per_step = double(in.global_batch) * in.seq;
  e.flops_6n = f.matmul;
  e.flops_attention = f.attention;
  e.flops_recompute = f.recompute;

  // Time: the step's FLOPs at mfu of the cluster's peak, stretched by the pipeline bubble
  // (p-1)/(m+p-1) and a communication penalty that is a heuristic, not a measurement: 2% per extra
  // tp rank inside an 8-GPU NVLink node, +50% once tp spans nodes, +5% for ZeRO-3's extra weight
  // all-gathers. Data-parallel all-reduces are assumed overlapped with the backward.
  const double rate = double(in.gpus) * in.peak_tflops * 1e12 * in.mfu;
  e.bubble = double(p - 1) / double(m + p - 1);
  e.overhead =
      0.02 * (std::min(t, 8) - 1) + (t > 8 ? 0.5 : 0.0) + (in.zero == 3 && in.dp > 1 ? 0.05 : 0.0);
  e.step_seconds = e.flops_per_step() / rate * (1 + e.overhead) / (1 - e.bubble);
  e.steps = int64_t(std::ceil(in.tokens / e.tokens_per_step));
  e.run_seconds = double(e.steps) * e.step_seconds;
  e.run_seconds_6nd = 6.0 * N_active * in.tokens / rate;
  e.in = in;
  return e;
}

std::vector<Estimate> suggest(const EstimateInput& in_) {
  EstimateInput in = in_;
  if (in.global_batch == 0) in.global_batch = int64_t(in.micro_batch) * in.gpus * in.grad_accum;
  const ModelConfig& c = in.model;
  std::vector<Estimate> out;
  for (int tp = 1; tp <= in.gpus; ++tp) {
    if (in.gpus % tp || c.heads % tp || c.kv_heads % tp || c.intermediate % tp) continue;
    for (int pp = 1; pp <= in.gpus / tp; ++pp) {
      if ((in.gpus / tp) % pp || c.layers % pp) continue;
      const int dp = in.gpus / (tp * pp);
      if (in.global_batch % (int64_t(in.micro_batch) * dp)) continue;
      if (in.kiln_cpu && (tp > 1 || pp > 1 || dp > 1)) continue;
      for (int zero = 0; zero <= (dp > 1 && !in.kiln_cpu ? 3 : 0); ++zero) {
        EstimateInput x = in;
        x.dp = dp, x.tp = tp, x.pp = pp, x.zero = zero;
        x.sequence_parallel = tp > 1;  // free: the same communication volume as tp alone
        Estimate e = estimate(x);
        if (e.fits) out.push_back(e);
      }
    }
  }
  std::stable_sort(out.begin(), out.end(), [](const Estimate& a, const Estimate& b) {
    if (a.step_seconds != b.step_seconds) return a.step_seconds < b.step_seconds;
    return a.memory.total() < b.memory.total();
  });
  return out;
}

std::string what_would_fit(const EstimateInput& in) {
  const std::string mem = gib(in.gpu_memory);
  if (in.kiln_cpu) {
    const MemoryBytes m = estimate_kiln_cpu_memory(in.model, in.micro_batch, in.seq);
    return str("kiln's CPU trainer needs ", gib(m.total()), " (model states ", gib(m.states()),
               ", activations ", gib(m.activations + m.logits), ") and --gpu-memory gives it ", mem,
               ": lower --micro-batch or --seq, or train a smaller model");
  }
  std::vector<Estimate> here = suggest(in);
  if (!here.empty()) {
    std::string s = str("on ", in.gpus, " GPUs of ", mem, " these fit: ");
    for (size_t i = 0; i < std::min<size_t>(3, here.size()); ++i)
      s += (i ? "; " : "") + layout_str(here[i].in) + " (" + gib(here[i].memory.total()) + ")";
    return s;
  }
  std::string s;
  if (in.recompute != Recompute::full) {
    EstimateInput full = in;
    full.recompute = Recompute::full;
    std::vector<Estimate> f = suggest(full);
    if (!f.empty()) {
      s = str("--recompute full fits on ", in.gpus, " GPUs with ", layout_str(f[0].in), " (",
              gib(f[0].memory.total()), "); or ");
    }
  }
  for (int g = std::max(2, in.gpus * 2); g <= (1 << 16); g *= 2) {
    EstimateInput more = in;
    more.gpus = g;
    more.global_batch = 0;  // micro_batch * gpus * grad_accum
    std::vector<Estimate> f = suggest(more);
    if (f.empty()) continue;
    const Estimate* z3 = nullptr;
    for (const Estimate& x : f)
      if (x.in.zero == 3 && !z3) z3 = &x;
    s += str("needs at least ", g, " GPUs of ", mem, ": ", layout_str(f[0].in), " (",
             gib(f[0].memory.total()), ")");
    if (z3 && z3 != &f[0])
      s += str(", or ", layout_str(z3->in), " (", gib(z3->memory.total()), ")");
    return s;
  }
  EstimateInput one = in;
  one.tp = 1;
  one.sequence_parallel = false;
  return s + str("does not fit on up to 65536 GPUs of ", mem,
                 ": one layer's activations without recomputation at ", "--micro-batch ",
                 in.micro_batch, " --seq ", in.seq, " take ",
                 gib(layer_activation_bytes(one, Recompute::none)),
                 "; lower --micro-batch or --seq, or use larger GPUs");
}

std::string estimate_table(const Estimate& e) {
  const EstimateInput& in = e.in;
  const ModelConfig& c = in.model;
  std::ostringstream o;
  char buf[256];
  auto line = [&](const char* fmt, auto... args) {
    std::snprintf(buf, sizeof buf, fmt, args...);
    o << buf << "\n";
  };
  line("model     N = %.4g parameters%s (L=%d C=%d H=%d K=%d F=%d V=%d)", double(e.params),
       in.params_override ? " (--params)" : "", c.layers, c.hidden, c.heads, c.kv_heads,
       c.intermediate, c.vocab_size);
  if (c.moe.enabled())
    line("experts   %d per MoE layer, %d per token: %.4g active parameters per token (the FLOPs' N)",
         c.moe.experts, c.moe.experts_per_tok, double(e.active_params));
  if (in.kiln_cpu) {
    line("target    kiln CPU trainer, fp32, B=%d T=%d", in.micro_batch, in.seq);
  } else {
    line("cluster   %d GPUs x %s, %.0f TFLOP/s peak, MFU %.2f", in.gpus, gib(in.gpu_memory).c_str(),
         in.peak_tflops, in.mfu);
    line("layout    %s, micro-batch %d x %d micro-batches, seq %d, global batch %lld",
         layout_str(in).c_str(), in.micro_batch, e.micro_batches, in.seq,
         (long long)in.global_batch);
    line("training  %s, recompute %s, %s accounting: %g+%g+%g = %g bytes/param",
         name_of(in.precision), name_of(in.recompute), to_string(in.accounting),
         e.bytes_per_param[0], e.bytes_per_param[1], e.bytes_per_param[2],
         e.bytes_per_param[0] + e.bytes_per_param[1] + e.bytes_per_param[2]);
  }
  o << "\nmemory per rank";
  if (!in.kiln_cpu) o << " (" << e.rank_params << " parameters on the busiest rank)";
  o << "\n";
  line("  weights       %12s", gib(e.memory.weights).c_str());
  line("  gradients     %12s", gib(e.memory.grads).c_str());
  line("  optimizer     %12s", gib(e.memory.optimizer).c_str());
  line("  = model states%12s", gib(e.memory.states()).c_str());
  line("  activations   %12s", gib(e.memory.activations).c_str());
  line("  logits        %12s", gib(e.memory.logits).c_str());
  line("  total         %12s  of %s: %s", gib(e.memory.total()).c_str(), gib(in.gpu_memory).c_str(),
       e.fits ? "fits" : "DOES NOT FIT");
  o << "\ntime\n";
  line("  tokens/step   %.4g (%lld sequences x %d)", e.tokens_per_step, (long long)in.global_batch,
       in.seq);
  line("  FLOPs/step    %.4g = 6*N*tokens %.4g + attention %.4g + recompute %.4g",
       e.flops_per_step(), e.flops_6n, e.flops_attention, e.flops_recompute);
  line("  time/step     %.4g s (bubble %.1f%%, communication +%.0f%%)", e.step_seconds,
       100 * e.bubble, 100 * e.overhead);
  line("  run           D = %.4g tokens, %lld steps: %.1f days", in.tokens, (long long)e.steps,
       e.run_seconds / kDay);
  line("  6*N*D         %.4g FLOPs: %.4g s = %.1f days at %.0f TFLOP/s x %d x MFU %.2f",
       6.0 * double(e.active_params) * in.tokens, e.run_seconds_6nd, e.run_seconds_6nd / kDay,
       in.peak_tflops, in.gpus, in.mfu);
  return o.str();
}

nlohmann::json estimate_json(const Estimate& e) {
  const EstimateInput& in = e.in;
  nlohmann::json j;
  j["params"] = e.params;
  j["active_params"] = e.active_params;
  j["rank_params"] = e.rank_params;
  j["gpus"] = in.gpus;
  j["gpu_memory"] = in.gpu_memory;
  j["peak_tflops"] = in.peak_tflops;
  j["layout"] = {
      {"dp", in.dp}, {"tp", in.tp}, {"pp", in.pp}, {"zero", in.zero}, {"sp", in.sequence_parallel}};
  j["micro_batch"] = in.micro_batch;
  j["micro_batches"] = e.micro_batches;
  j["global_batch"] = in.global_batch;
  j["seq"] = in.seq;
  j["precision"] = name_of(in.precision);
  j["recompute"] = name_of(in.recompute);
  j["accounting"] = to_string(in.accounting);
  j["kiln_cpu"] = in.kiln_cpu;
  j["bytes_per_param"] = {{"weights", e.bytes_per_param[0]},
                          {"grads", e.bytes_per_param[1]},
                          {"optimizer", e.bytes_per_param[2]}};
  j["memory"] = {{"weights", e.memory.weights},     {"grads", e.memory.grads},
                 {"optimizer", e.memory.optimizer}, {"activations", e.memory.activations},
                 {"logits", e.memory.logits},       {"states", e.memory.states()},
                 {"total", e.memory.total()}};
  j["fits"] = e.fits;
  j["tokens_per_step"] = e.tokens_per_step;
  j["flops_per_step"] = e.flops_per_step();
  j["flops_6n"] = e.flops_6n;
  j["flops_attention"] = e.flops_attention;
  j["flops_recompute"] = e.flops_recompute;
  j["bubble"] = e.bubble;
  j["overhead"] = e.overhead;
  j["step_seconds"] = e.step_seconds;
  j["tokens"] = in.tokens;
  j["steps"] = e.steps;
  j["run_days"] = e.run_seconds / kDay;
  j["flops_6nd"] = 6.0 * double(e.active_params) * in.tokens;
  j["run_days_6nd"] = e.run_seconds_6nd / kDay;
  j["mfu"] = in.mfu;
  return j;
}

std::string suggest_table(const std::vector<Estimate>& layouts) {
  std::ostringstream o;
  char buf[160];
  std::snprintf(buf, sizeof buf, "%4s %4s %4s %3s %4s %9s %9s %9s %11s %9s\n", "dp", "tp", "pp",
                "sp", "zero", "GiB/rank", "act GiB", "bubble", "s/step", "days");
  o << buf;
  for (const Estimate& e : layouts) {
    std::snprintf(buf, sizeof buf, "%4d %4d %4d %3s %4d %9.2f %9.2f %8.1f%% %11.4g %9.1f\n",
                  e.in.dp, e.in.tp, e.in.pp, e.in.sequence_parallel ? "on" : "off", e.in.zero,
                  e.memory.total() / kGiB, (e.memory.activations + e.memory.logits) / kGiB,
                  100 * e.bubble, e.step_seconds, e.run_seconds / kDay);
    o << buf;
  }
  return o.str();
}

double parse_bytes(const std::string& text) {
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(text, &pos);
  } catch (const std::exception&) {
    fail("estimate", "cannot read a size from '", text, "'; write e.g. 80GiB, 40GB or 1e9");
  }
  std::string unit = lower(text.substr(pos));
  unit.erase(std::remove(unit.begin(), unit.end(), ' '), unit.end());
  double mul = 0;
  if (unit.empty() || unit == "b") mul = 1;
  if (unit == "k" || unit == "kib") mul = 1024.0;
  if (unit == "m" || unit == "mib") mul = 1024.0 * 1024;
  if (unit == "g" || unit == "gib") mul = kGiB;
  if (unit == "t" || unit == "tib") mul = kGiB * 1024;
  if (unit == "kb") mul = 1e3;
  if (unit == "mb") mul = 1e6;
  if (unit == "gb") mul = 1e9;
  if (unit == "tb") mul = 1e12;
  KILN_CHECK(mul > 0 && v > 0, "estimate", "cannot read a size from '", text,
             "'; write e.g. 80GiB, 40GB or 1e9 (units B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)");
  return v * mul;
}

EstimateInput::Accounting parse_accounting(const std::string& s) {
  if (s == "standard") return Accounting::standard;
  if (s == "seed") return Accounting::seed;
  fail("estimate", "--accounting '", s, "' is not one of standard (2+2+12), seed (2+2+4)");
}

const char* to_string(EstimateInput::Accounting a) {
  return a == Accounting::standard ? "standard" : "seed";
}

}  // namespace kiln
