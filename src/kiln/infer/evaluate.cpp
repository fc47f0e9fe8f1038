#include "kiln/infer/evaluate.h"

#include <algorithm>
#include <cctype>
#include <cmath>

#include "kiln/core/error.h"
#include "kiln/infer/forward_pass.h"

namespace kiln {

double EvalResult::perplexity() const {
  return std::exp(loss);
}
double EvalResult::bits_per_byte() const {
  return loss * double(tokens) / double(bytes) / std::log(2.0);
}
double EvalResult::unigram_bits_per_byte() const {
  return unigram_entropy * double(tokens) / double(bytes) / std::log(2.0);
}

namespace {

// -log softmax(logits)[target], in double.
double cross_entropy(const float* logits, int V, int32_t target) {
  const float mx = *std::max_element(logits, logits + V);
  double sum = 0;
  for (int v = 0; v < V; ++v) sum += std::exp(double(logits[v] - mx));
  return std::log(sum) - double(logits[target] - mx);
}

}  // namespace

EvalResult evaluate_text(const Model& model, const Tokenizer& tok, const std::string& text,
                         int seq_len, int batch) {
  const ModelConfig& c = model.config();
  KILN_CHECK(batch >= 1, "eval", "batch must be >= 1, got ", batch);
  const std::vector<int32_t> ids = tok.encode(text);
  KILN_CHECK(ids.size() >= 2, "eval", "the text has fewer than 2 tokens");
  const int64_t targets = int64_t(ids.size()) - 1;
  const int T = int(std::min<int64_t>(seq_len > 0 ? seq_len : c.max_positions, targets));
  KILN_CHECK(T <= c.max_positions, "eval", "seq_len ", T, " exceeds the model's context of ",
             c.max_positions);
  const int64_t windows = (targets + T - 1) / T;
  const int B = int(std::min<int64_t>(batch, windows));
  const int V = c.vocab_size;
  // B windows' rows per forward, fewer when their logits (rows, V) would pass 2^26 floats.
  const int max_rows = std::max(1, std::min(B * T, (1 << 26) / V));

  auto pass = make_cpu_forward_pass(c, fp32_weights(model), T);
  const int window_blocks = (T + kBlockTokens - 1) / kBlockTokens;
  KvCache cache({c.layers, c.kv_heads * c.head_dim, B * window_blocks + 1});
  EvalResult r;
  double sum = 0;
  std::vector<int32_t> row_ids;
  std::vector<int> pos, logit_rows;
  std::vector<KvCache::SeqId> row_seq;
  std::vector<int32_t> row_target;
  std::vector<float> logits;
  for (int64_t w0 = 0; w0 < windows; w0 += B) {
    // B windows, each a sequence; their rows go in order, max_rows at a time.
    struct Window {
      KvCache::SeqId seq;
      int64_t start;
      int len, done = 0;
    };
    std::vector<Window> ws;
    for (int64_t w = w0; w < std::min(windows, w0 + B); ++w)
      ws.push_back({cache.create(), w * T, int(std::min<int64_t>(T, targets - w * T))});
    for (size_t k = 0; k < ws.size();) {
      row_ids.clear(), pos.clear(), logit_rows.clear(), row_seq.clear(), row_target.clear();
      std::vector<std::pair<size_t, int>> parts;  // (window, rows) in this call
      while (k < ws.size() && int(row_ids.size()) < max_rows) {
        Window& w = ws[k];
        const int n = std::min(w.len - w.done, max_rows - int(row_ids.size()));
        cache.prepare_append(w.seq, n);
        for (int j = 0; j < n; ++j) {
          const int64_t i = w.start + w.done + j;
          logit_rows.push_back(int(row_ids.size()));
          row_ids.push_back(ids[i]);
          row_target.push_back(ids[i + 1]);
          pos.push_back(w.done + j);
          row_seq.push_back(w.seq);
        }
        parts.push_back({k, n});
        w.done += n;
        if (w.done == w.len) ++k;
      }
      pass->forward({row_ids, pos, row_seq, logit_rows}, cache, logits);
      int row = 0;
      for (auto [wk, n] : parts) {
        cache.commit(ws[wk].seq, &row_ids[row], n);
        row += n;
      }
      for (size_t i = 0; i < row_ids.size(); ++i)
        sum += cross_entropy(&logits[i * size_t(V)], V, row_target[i]);
      r.tokens += int64_t(row_ids.size());
    }
    for (const Window& w : ws) cache.release(w.seq);
  }
  r.loss = sum / double(r.tokens);
  r.bytes = int64_t(text.size());
  std::vector<int64_t> freq(V, 0);
  for (size_t i = 1; i < ids.size(); ++i) ++freq[ids[i]];
  for (int64_t f : freq)
    if (f > 0)
      r.unigram_entropy -= double(f) / double(targets) * std::log(double(f) / double(targets));
  return r;
}

std::vector<std::string> split_words(const std::string& text) {
  std::vector<std::string> words;
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
    size_t j = i;
    while (j < text.size() && !std::isspace(static_cast<unsigned char>(text[j]))) ++j;
    if (j > i) words.push_back(text.substr(i, j - i));
    i = j;
  }
  return words;
}

int64_t word_edit_distance(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  std::vector<int64_t> row(b.size() + 1), next(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = int64_t(j);
  for (size_t i = 1; i <= a.size(); ++i) {
    next[0] = int64_t(i);
    for (size_t j = 1; j <= b.size(); ++j)
      next[j] = std::min({row[j] + 1, next[j - 1] + 1, row[j - 1] + (a[i - 1] != b[j - 1])});
    std::swap(row, next);
  }
  return row[b.size()];
}

ReplyEval evaluate_replies(Engine& eng, const Tokenizer& tok,
                           const std::vector<std::pair<std::string, std::string>>& items,
                           const StopConditions& stop) {
  SamplingParams greedy;
  greedy.temperature = 0;
  std::vector<int64_t> ids;
  for (const auto& [prompt, reference] : items)
    ids.push_back(eng.add_request(tok.encode(prompt, /*allow_special=*/true), greedy, stop));
  std::vector<RequestResult> results = eng.run_all();
  ReplyEval r;
  for (size_t i = 0; i < items.size(); ++i) {
    auto it = std::find_if(results.begin(), results.end(),
                           [&](const RequestResult& x) { return x.id == ids[i]; });
    KILN_CHECK(it != results.end() && !it->samples.empty(), "eval", "request ", i,
               " produced no reply");
    const std::vector<std::string> want = split_words(items[i].second),
                                   got = split_words(it->samples[0].text);
    ++r.examples;
    r.exact += want == got;
    r.errors += word_edit_distance(want, got);
    r.reference_words += int64_t(want.size());
    if (want != got && r.misses.size() < 5)
      r.misses.emplace_back(items[i].second, it->samples[0].text);
  }
  return r;
}

}  // namespace kiln
