// Allocations of batched decoding, measured: this program replaces the global operator new, plain
// and aligned. The caches' key and value stores allocate through the aligned one (and nothing
// else of the engine does: its live bytes equal the caches' state_bytes at every step), so a
// batched run under a KV budget is checked never to hold more live KV bytes than the budget; and
// once its scratch is reserved, the batched forward pass allocates nothing through operator new
// (Eigen's matrix products take their packing buffers from Eigen's own heap, per product block:
// model.hpp says why).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <initializer_list>
#include <new>
#include <string>
#include <vector>

#include "batch.hpp"
#include "checkpoint.hpp"
#include "model.hpp"
#include "small_model.hpp"
#include "tokenizer.hpp"

namespace {

std::atomic<long long> g_live_bytes{0};         // requested bytes allocated and not yet freed
std::atomic<long long> g_allocations{0};        // aligned ones, ever
std::atomic<long long> g_plain_allocations{0};  // plain ones while g_counting
std::atomic<bool> g_counting{false};

// Room before the block for its size, keeping the block aligned.
std::size_t header_bytes(std::align_val_t align) {
  return std::max(static_cast<std::size_t>(align), alignof(std::max_align_t));
}

void* allocate(std::size_t size, std::align_val_t align) noexcept {
  const std::size_t head = header_bytes(align);
  const std::size_t total =
      (head + size + head - 1) / head * head;  // aligned_alloc wants a multiple
  auto* base = static_cast<unsigned char*>(std::aligned_alloc(head, total));
  if (!base) return nullptr;
  *reinterpret_cast<std::size_t*>(base + head - sizeof(std::size_t)) = size;
  g_live_bytes += static_cast<long long>(size);
  ++g_allocations;
  return base + head;
}

void release(void* p, std::align_val_t align) noexcept {
  if (!p) return;
  const std::size_t head = header_bytes(align);
  unsigned char* base = static_cast<unsigned char*>(p) - head;
  g_live_bytes -=
      static_cast<long long>(*reinterpret_cast<std::size_t*>(base + head - sizeof(std::size_t)));
  std::free(base);
}

}  // namespace

// The replacement pairs are malloc or aligned_alloc, and free, on both sides; GCC cannot see that
// new is replaced.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

void* operator new(std::size_t size) {
  if (g_counting) ++g_plain_allocations;
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

void* operator new(std::size_t size, std::align_val_t align) {
  if (void* p = allocate(size, align)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t size, std::align_val_t align, const std::nothrow_t&) noexcept {
  return allocate(size, align);
}
void operator delete(void* p, std::align_val_t align) noexcept { release(p, align); }
void operator delete(void* p, std::size_t, std::align_val_t align) noexcept { release(p, align); }
void operator delete(void* p, std::align_val_t align, const std::nothrow_t&) noexcept {
  release(p, align);
}

namespace engine {
namespace {

LlamaWeights random_model() { return testing::small_random_model(11); }

// Requests of different lengths (so of different KV bytes under Full), sampled.
std::vector<Request> requests() {
  const Index lengths[] = {30, 12, 45, 20, 8, 38, 26, 16};
  std::vector<Request> out;
  for (std::size_t i = 0; i < std::size(lengths); ++i) {
    Request r;
    r.prompt = {kBos};
    for (std::size_t t = 0; t < i % 4; ++t) r.prompt.push_back(static_cast<int>(5 + 7 * t + i));
    r.max_tokens = lengths[i];
    r.seed = 77 + i;
    out.push_back(r);
  }
  return out;
}

TEST(BatchBudget, LiveKvBytesNeverExceedTheBudgetAndEqualTheCachesStateBytes) {
  const LlamaWeights weights = random_model();
  const std::vector<Request> reqs = requests();
  struct Case {
    const char* policy;
    Index capacity;
    msrnn::PositionMode positions;
    msrnn::KvType kv_type;
  };
  const Case cases[] = {
      {"full", -1, msrnn::PositionMode::absolute, msrnn::KvType::f32},
      {"window", 8, msrnn::PositionMode::absolute, msrnn::KvType::f16},
      {"h2o", 8, msrnn::PositionMode::absolute, msrnn::KvType::q8},
      {"tova", 8, msrnn::PositionMode::in_cache, msrnn::KvType::f32},
      {"tova", 8, msrnn::PositionMode::absolute, msrnn::KvType::bf16},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.policy) + " " + msrnn::to_string(c.positions) + " " +
                 msrnn::to_string(c.kv_type));
    BatchSettings batch;
    batch.max_batch = 4;
    batch.cache.policy.name = c.policy;
    batch.cache.policy.sinks = 2;
    batch.cache.capacity = c.capacity;
    batch.cache.positions = c.positions;
    batch.cache.kv_type = c.kv_type;
    std::vector<std::size_t> need;
    for (const Request& r : reqs) {
      need.push_back(sequence_kv_bytes(weights.config, batch.cache, r.max_tokens));
    }
    // Room for about two and a half of the largest: fewer than max_batch fit at times.
    batch.kv_budget = *std::max_element(need.begin(), need.end()) * 5 / 2;

    Transformer model(weights, 2);
    const long long before = g_live_bytes;
    long long peak = 0;
    Index steps = 0;
    BatchCallbacks callbacks;
    callbacks.on_step = [&](const StepEvent& e) {
      const long long live = g_live_bytes - before;
      EXPECT_LE(live, static_cast<long long>(batch.kv_budget)) << "step " << e.step;
      EXPECT_EQ(live, static_cast<long long>(e.kv_bytes)) << "step " << e.step;
      peak = std::max(peak, live);
      ++steps;
    };
    const BatchResult result = decode_batch(model, reqs, batch, callbacks);
    EXPECT_EQ(steps, result.summary.steps);
    EXPECT_GT(steps, 0);
    EXPECT_EQ(peak, static_cast<long long>(result.summary.peak_kv_bytes));
    EXPECT_GE(result.summary.peak_batch, 2);  // the budget still lets sequences share steps
    EXPECT_EQ(g_live_bytes - before, 0) << "every cache freed at its sequence's end";
    for (std::size_t i = 0; i < reqs.size(); ++i) {
      EXPECT_EQ(result.sequences[i].kv_bytes, need[i]);
    }
  }
  EXPECT_GT(g_allocations, 0) << "the stores no longer allocate through aligned new";
}

// Batches of 8, 5, 3, 2 and 1 sequences, one after the other, through a model whose classifier
// is 32000 x 288: after one step of 8, nothing allocates through operator new (the caches'
// stores, aligned; the engine's vectors, plain) and the scratch does not grow. (The scratch is
// Eigen's, allocated with malloc: its size, reserved(), is what is checked.)
TEST(BatchAllocations, ForwardBatchAllocatesNoScratchOnceReserved) {
  LlamaConfig c;
  c.dim = 288;
  c.hidden_dim = 768;
  c.n_layers = 1;
  c.n_heads = 6;
  c.n_kv_heads = 2;
  c.vocab_size = 32000;
  c.seq_len = 64;
  const LlamaWeights weights = random_weights(c, 5);
  for (msrnn::PositionMode positions :
       {msrnn::PositionMode::absolute, msrnn::PositionMode::in_cache}) {
    for (Index threads : {1, 2}) {
      SCOPED_TRACE(std::string(msrnn::to_string(positions)) + ", threads " +
                   std::to_string(threads));
      CacheSettings s;
      s.policy.name = "tova";
      s.capacity = 8;
      s.positions = positions;
      std::vector<msrnn::AnyCache> caches;
      for (int i = 0; i < 8; ++i) {
        caches.emplace_back(cache_config(c, s), msrnn::make_policy(s.policy));
      }
      std::vector<std::vector<msrnn::AnyCache*>> batches;
      std::vector<std::vector<int>> tokens;
      for (std::size_t size : std::initializer_list<std::size_t>{8, 5, 3, 2, 1}) {
        batches.emplace_back();
        tokens.emplace_back();
        for (std::size_t i = 0; i < size; ++i) {
          batches.back().push_back(&caches[(i * 3) % 8]);
          tokens.back().push_back(static_cast<int>(3 + 11 * i));
        }
      }
      Transformer model(weights, threads);
      model.forward_batch(tokens[0], batches[0]);  // grows the scratch to 8 rows
      const Index reserved = model.reserved();
      const long long aligned = g_allocations;
      g_plain_allocations = 0;
      g_counting = true;
      try {
        for (int step = 0; step < 20; ++step) {  // past C: every cache evicts
          const std::size_t b = static_cast<std::size_t>(step) % batches.size();
          model.forward_batch(tokens[b], batches[b]);
        }
      } catch (const std::exception& e) {
        ADD_FAILURE() << e.what();
      }
      g_counting = false;
      EXPECT_EQ(g_plain_allocations, 0);
      EXPECT_EQ(g_allocations - aligned, 0) << "no cache allocated";
      EXPECT_EQ(model.reserved(), reserved) << "the scratch did not grow";
    }
  }
}

}  // namespace
}  // namespace engine
