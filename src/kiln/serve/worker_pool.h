// Threads with their own FIFO queue: a pipeline stage of `kiln serve` (tokenize, detokenize), so
// its work runs neither on the HTTP io threads nor on the engine loop. Jobs run in the order
// posted; with one thread, one after another (the detokenize stage relies on that for a
// request's updates). Cost of post: a mutex held for a push.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace kiln::serve {

class WorkerPool {
 public:
  // `name` is for the log (a job that throws is logged and dropped).
  WorkerPool(std::string name, int threads);
  ~WorkerPool() { stop(); }
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  void post(std::function<void()> job);  // dropped after stop()
  void stop();  // lets running jobs end, drops queued ones, joins the threads

 private:
  void run();

  std::string name_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace kiln::serve
