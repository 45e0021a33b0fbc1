// The tools' record files: the eviction trace (--trace) and each prediction's loss (--per-token),
// CSV written as the run goes (flat memory along a long stream), through AtomicOutput.
#pragma once

#include <charconv>
#include <cstdio>
#include <msrnn/msrnn.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "model.hpp"
#include "output_file.hpp"

namespace engine {

/// What a run is: the fields every row of its records repeats.
struct RunLabel {
  std::string policy;
  Index capacity = 0;
  msrnn::PositionMode positions = msrnn::PositionMode::absolute;
  msrnn::KvType kv_type = msrnn::KvType::f32;
};

namespace detail {

// Rows built in a buffer with to_chars, written in blocks: a trace has a row per state, and
// formatting must not slow the run it records (bench/README.md, "Traces").
class RowBuffer {
 public:
  explicit RowBuffer(const std::string& path) : out_(path) { text_.reserve(kBlock + 256); }

  void put(std::string_view text) { text_.append(text); }
  void put(char c) { text_.push_back(c); }
  void put(long long value) {
    char digits[24];
    const std::to_chars_result r = std::to_chars(digits, digits + sizeof(digits), value);
    text_.append(digits, static_cast<std::size_t>(r.ptr - digits));
  }
  // The shortest text that reads back as the same double.
  void put(double value) {
    char digits[32];
    const std::to_chars_result r = std::to_chars(digits, digits + sizeof(digits), value);
    text_.append(digits, static_cast<std::size_t>(r.ptr - digits));
  }
  // Ends a row; writes the block once it is full.
  void end_row() {
    text_.push_back('\n');
    if (text_.size() >= kBlock) flush();
  }
  void commit() { output().commit(); }
  /// The file, every row written to it (commit_all).
  AtomicOutput& output() {
    flush();
    return out_;
  }

 private:
  static constexpr std::size_t kBlock = std::size_t{1} << 16;
  void flush() {
    // A failed write shows at commit (ferror), which names the file.
    std::fwrite(text_.data(), 1, text_.size(), out_.file());
    text_.clear();
  }

  AtomicOutput out_;
  std::string text_;
};

}  // namespace detail

/// --trace: a row per state a cache held, when it entered and when it left:
///   policy,capacity,layer,kv_head,position,token,evicted_at,positions,kv_type,sequence
/// `token` is the token id at `position` (empty where the tool does not know it: a state from
/// before a --load-state); `evicted_at` the position of the token whose step
/// evicted it, empty for a state still kept when its sequence ended; `sequence` tells sequences
/// apart (perplexity's chunks, generate's prompts); `positions` and `kv_type` are the run's.
/// Rows come as the evictions happen, then each sequence's kept states at its end.
class TraceFile {
 public:
  explicit TraceFile(const std::string& path) : rows_(path) {
    rows_.put(
        std::string_view("policy,capacity,layer,kv_head,position,token,evicted_at,positions,"
                         "kv_type,sequence"));
    rows_.end_row();
  }

  /// The fields a sequence's rows share: before `layer` ("policy,capacity,") and after
  /// `evicted_at` (",positions,kv_type,sequence"), built once per sequence.
  struct Label {
    std::string head, tail;
  };
  static Label label(const RunLabel& run, Index sequence) {
    return {run.policy + "," + std::to_string(run.capacity) + ",",
            std::string(",") + msrnn::to_string(run.positions) + "," +
                msrnn::to_string(run.kv_type) + "," + std::to_string(sequence)};
  }

  /// A row; `token` < 0 when unknown, `evicted_at` < 0 for a state still kept.
  void row(const Label& label, Index layer, Index kv_head, Index position, int token,
           Index evicted_at) {
    rows_.put(label.head);
    rows_.put(static_cast<long long>(layer));
    rows_.put(',');
    rows_.put(static_cast<long long>(kv_head));
    rows_.put(',');
    rows_.put(static_cast<long long>(position));
    rows_.put(',');
    if (token >= 0) rows_.put(static_cast<long long>(token));
    rows_.put(',');
    if (evicted_at >= 0) rows_.put(static_cast<long long>(evicted_at));
    rows_.put(label.tail);
    rows_.end_row();
  }

  /// Renames the finished file into place (AtomicOutput::commit).
  void commit() { rows_.commit(); }
  /// The file, every row written to it (to commit with others: commit_all).
  AtomicOutput& output() { return rows_.output(); }

 private:
  detail::RowBuffer rows_;
};

/// One sequence's trace: observes its cache, keeps the evictions of the forward pass under way
/// (their positions' tokens may not be known yet: TOVA can evict the token just fed), and writes
/// them when `write` is given the tokens. The cache must outlive the trace or `finish` first.
///
///   SequenceTrace trace(file, run, sequence, model.cache());
///   model.forward(token); tokens.push_back(token); trace.write(tokens);
///   ...
///   trace.finish(tokens);  // the kept states, and the observer removed
class SequenceTrace {
 public:
  SequenceTrace(TraceFile& file, const RunLabel& run, Index sequence, msrnn::AnyCache& cache)
      : file_(&file), label_(TraceFile::label(run, sequence)), cache_(&cache) {
    cache.set_eviction_observer([this](const msrnn::Eviction& e) { pending_.push_back(e); });
  }
  SequenceTrace(const SequenceTrace&) = delete;  // the observer points at this object
  SequenceTrace& operator=(const SequenceTrace&) = delete;
  ~SequenceTrace() {
    if (cache_) cache_->set_eviction_observer(nullptr);
  }

  /// Forgets the cache without touching it: it is gone (a run that failed and freed it).
  void abandon() noexcept { cache_ = nullptr; }

  /// Writes the evictions so far; tokens[i] is the token at position first + i, for every
  /// position fed from `first` on; those before `first` are unknown (a resumed sequence's).
  void write(const std::vector<int>& tokens, Index first = 0) {
    for (const msrnn::Eviction& e : pending_) {
      file_->row(label_, e.layer, e.kv_head, e.position, token_at(tokens, first, e.position),
                 e.step);
    }
    pending_.clear();
  }

  /// The sequence ended: its evictions, then the states its cache still keeps; stops observing.
  void finish(const std::vector<int>& tokens, Index first = 0) {
    write(tokens, first);
    const msrnn::CacheConfig& c = cache_->config();
    for (Index l = 0; l < c.n_layers; ++l) {
      for (Index g = 0; g < c.n_kv_heads; ++g) {
        for (Index p : cache_->kept_positions(l, g)) {
          file_->row(label_, l, g, p, token_at(tokens, first, p), -1);
        }
      }
    }
    cache_->set_eviction_observer(nullptr);
    cache_ = nullptr;
  }

 private:
  static int token_at(const std::vector<int>& tokens, Index first, Index position) {
    if (position < first) return -1;
    if (position - first >= static_cast<Index>(tokens.size())) {
      throw std::logic_error("trace: no token known at position " + std::to_string(position));
    }
    return tokens[static_cast<std::size_t>(position - first)];
  }

  TraceFile* file_;
  TraceFile::Label label_;
  msrnn::AnyCache* cache_;
  std::vector<msrnn::Eviction> pending_;  // of the forward pass under way
};

/// --per-token: each prediction's loss, as perplexity.hpp defines it:
///   policy,capacity,positions,kv_type,index,token,nll
/// `index` counts the predictions of the run from 0 (over every chunk), `token` is the token
/// predicted, `nll` its negative log-likelihood in nats (shortest round-trip text).
class PerTokenFile {
 public:
  explicit PerTokenFile(const std::string& path) : rows_(path) {
    rows_.put(std::string_view("policy,capacity,positions,kv_type,index,token,nll"));
    rows_.end_row();
  }

  void row(const RunLabel& run, Index index, int token, double nll) {
    rows_.put(run.policy);
    rows_.put(',');
    rows_.put(static_cast<long long>(run.capacity));
    rows_.put(',');
    rows_.put(std::string_view(msrnn::to_string(run.positions)));
    rows_.put(',');
    rows_.put(std::string_view(msrnn::to_string(run.kv_type)));
    rows_.put(',');
    rows_.put(static_cast<long long>(index));
    rows_.put(',');
    rows_.put(static_cast<long long>(token));
    rows_.put(',');
    rows_.put(nll);
    rows_.end_row();
  }

  void commit() { rows_.commit(); }
  /// The file, every row written to it (to commit with others: commit_all).
  AtomicOutput& output() { return rows_.output(); }

 private:
  detail::RowBuffer rows_;
};

}  // namespace engine
