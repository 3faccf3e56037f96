// camera_app --gst (live_app.h): capture (GStreamer streaming threads) -> ChunkAssembler -> bounded
// ChunkQueue (drop policy) -> this thread: session chunks, questions, events. docs/cpp.md, "Live
// cameras with GStreamer"; the policies and the event fields are docs/live.md's.
#include "live_app.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <deque>
#include <fstream>
#include <iostream>
#include <memory>
#include <thread>

#include <nlohmann/json.hpp>

#include "gst_capture.h"
#include "live_chunks.h"

using omnisift_live::Clock;
using nlohmann::json;

namespace {

std::atomic<bool> g_interrupted{false};
extern "C" void on_sigint(int) { g_interrupted = true; }

double wall_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}
double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

// JSON lines to --events (nothing without one); flushed per line so a reader follows the stream.
class Events {
 public:
  explicit Events(const std::string& path) {
    if (!path.empty()) out_ = std::make_unique<std::ofstream>(path, std::ios::trunc);
  }
  bool ok() const { return !out_ || out_->good(); }
  void write(const std::string& event, json fields) {
    if (!out_) return;
    fields["event"] = event;
    fields["wall"] = wall_now();
    *out_ << fields.dump() << "\n" << std::flush;
  }

 private:
  std::unique_ptr<std::ofstream> out_;
};

struct Counters {
  int64_t processed = 0, partial = 0;
  std::vector<double> lags;
  std::deque<omnisift_live::LiveChunk> in_session;   // pushed, not yet run by the session (its log-mel look-ahead)
};

// Chunk events for the chunks the session ran since the last call.
void report_chunks(omnisift::Session& session, Counters& c, const omnisift_live::ChunkQueue& queue, Events& events,
                   int64_t& seen) {
  while (seen < session.chunks() && !c.in_session.empty()) {
    const omnisift_live::LiveChunk& done = c.in_session.front();
    const double lag = ms_since(done.complete);
    c.lags.push_back(lag);
    ++c.processed;
    const omnisift::ChunkLayout& layout = session.layout().chunks()[static_cast<size_t>(seen)];
    std::vector<int64_t> kv, ka;
    for (int64_t i : session.last_kept_index()) (i < layout.n_video() ? kv : ka).push_back(i < layout.n_video() ? i : i - layout.n_video());
    events.write("chunk", {{"index", done.index}, {"capture_time", done.capture_time}, {"video_tokens", layout.n_video()},
                           {"audio_tokens", layout.n_audio}, {"kept_video", kv.size()}, {"kept_audio", ka.size()},
                           {"kept_video_index", kv}, {"kept_audio_index", ka}, {"lag_ms", std::round(lag * 10) / 10},
                           {"dropped", queue.dropped()}, {"processed", c.processed}, {"audio_filled", done.audio_filled}});
    c.in_session.pop_front();
    ++seen;
  }
}

// Ask and stream the answer to stdout; the answer event carries the timings.
omnisift::Status ask(omnisift::Session& session, const std::string& question, const char* origin, int64_t after_chunk,
                     Events& events) {
  std::cout << "Q: " << question << "\nA: " << std::flush;
  const Clock::time_point asked = Clock::now();
  Clock::time_point first;
  int64_t tokens = 0;
  auto answer = session.ask(question, [&](const omnisift::TokenEvent& e) {
    if (tokens++ == 0) first = Clock::now();
    std::cout << e.text << std::flush;
    return true;
  });
  std::cout << "\n";
  if (!answer.ok()) return answer.status();
  const double decode_s = tokens > 1 ? std::chrono::duration<double>(Clock::now() - first).count() : 0;
  events.write("answer", {{"question", question}, {"text", answer->text}, {"origin", origin},
                          {"ttft_ms", tokens ? std::chrono::duration<double, std::milli>(first - asked).count() : 0.0},
                          {"tokens", tokens}, {"tokens_per_s", decode_s > 0 ? (tokens - 1) / decode_s : 0.0},
                          {"after_chunk", after_chunk}});
  return omnisift::Status::Ok();
}

int fail_line(const std::string& line) {
  std::cerr << "camera_app: " << line << "\n";
  return 1;
}

// One live stream: the capture, the queue, the session's side, the counters and events.
class LiveRun {
 public:
  LiveRun(const LiveArgs& args, omnisift::Session& session, const omnisift::ExportFolder& folder, omnisift_live::DropPolicy policy)
      : args_(args), session_(session), folder_(folder), m_(folder.manifest()), events_(args.events),
        queue_(static_cast<size_t>(args.queue), policy) {}

  // Starts the pipeline; "" or the one line that says why not.
  std::string open() {
    if (!events_.ok()) return "cannot write --events " + args_.events + "; pick a writable path";
    std::string error;
    capture_ = omnisift_live::GstCapture::start({args_.pipeline, m_.height, m_.width}, queue_, error);
    if (!capture_) return error;
    limit_ = args_.seconds > 0 ? static_cast<int64_t>(std::ceil(args_.seconds / 2.0)) : -1;
    capture_->stop_after(limit_);
    const auto& d = m_.dims;
    events_.write("start", {{"source", args_.pipeline}, {"export", folder_.path()}, {"backend", args_.backend},
                            {"ratio", args_.ratio}, {"resolution", {m_.height, m_.width}},
                            {"grid", {d.grid_h / d.spatial_merge, d.grid_w / d.spatial_merge}},
                            {"policy", args_.drop_policy}, {"queue", args_.queue}});
    audio_checked_ = !capture_->has_audio_branch();
    if (!capture_->has_audio_branch() && !no_audio("the --gst pipeline has no audio branch (link one into `audio.`)"))
      return "--require-audio: the --gst pipeline has no audio branch; link the source's audio into `audio.` "
             "(e.g. \"d. ! audio.\")";
    return "";
  }

  // Until --seconds, the end of the stream, an error, a stall or Ctrl-C; then the last question.
  int run() {
    std::signal(SIGINT, on_sigint);   // Ctrl-C ends the stream cleanly: the last question, the end event
    double next_ask = args_.ask_every > 0 ? args_.ask_every : -1;
    for (;;) {
      for (const auto& drop : queue_.take_drops())
        events_.write("drop", {{"index", drop.index}, {"capture_time", drop.capture_time}, {"policy", args_.drop_policy},
                               {"dropped", queue_.dropped()}});
      omnisift_live::LiveChunk chunk;
      if (queue_.take(chunk, std::chrono::milliseconds(100))) {
        const double end_time = chunk.capture_time + 2.0;
        omnisift::Status st = process(std::move(chunk));
        if (st.ok() && next_ask > 0 && end_time >= next_ask) {
          next_ask += args_.ask_every;
          st = ask(session_, args_.question, "timer", last_index_, events_);
          report_chunks(session_, c_, queue_, events_, seen_);   // the question ran what waited
        }
        if (!st.ok()) return fail_line(st.to_string());
        continue;
      }
      if (stopped()) break;
    }
    return finish();
  }

 private:
  // false: --require-audio refuses
  bool no_audio(const std::string& why) {
    if (args_.require_audio) return false;
    const std::string text = why + "; the audio is silence";
    std::cerr << "camera_app: " << text << "\n";
    events_.write("notice", {{"text", text}});
    capture_->set_no_audio();
    return true;
  }

  // One whole chunk into the session: 4 frames, 2 s of PCM; chunk events for what the session ran.
  omnisift::Status process(omnisift_live::LiveChunk chunk) {
    if (args_.process_delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(args_.process_delay_ms));
    for (const auto& frame : chunk.frames) OMNISIFT_RETURN_IF_ERROR(session_.push_frame({frame.data(), m_.height, m_.width}));
    last_index_ = chunk.index;
    c_.in_session.push_back(std::move(chunk));
    // the chunk's samples not pushed yet (the last chunk's look-ahead was its first ones), then its
    // look-ahead, so the session runs it now rather than when the next chunk's audio comes
    const omnisift_live::LiveChunk& in = c_.in_session.back();
    const size_t skip = std::min(pushed_ahead_, in.pcm.size());
    omnisift::Status st = session_.push_audio(in.pcm.data() + skip, in.pcm.size() - skip);
    if (st.ok()) st = session_.push_audio(in.lookahead.data(), in.lookahead.size());
    pushed_ahead_ = in.lookahead.size();
    if (st.code() == omnisift::StatusCode::kContextFull)
      return omnisift::Status(st.code(), st.message() + " (--context-policy sliding keeps streaming)");
    OMNISIFT_RETURN_IF_ERROR(st);
    report_chunks(session_, c_, queue_, events_, seen_);
    return omnisift::Status::Ok();
  }

  // With nothing queued: whether the stream is over (reason_, failure_ say why).
  bool stopped() {
    if (limit_ >= 0 && capture_->captured() >= limit_ && queue_.size() == 0) return true;
    if (g_interrupted) return reason_ = "interrupted", true;
    std::string message;
    const omnisift_live::GstEvent event = capture_->poll(message);
    if ((event == omnisift_live::GstEvent::kEnded || capture_->video_ended()) && queue_.size() == 0)
      return reason_ = "source ended", true;
    if (event == omnisift_live::GstEvent::kError)
      return fail("the --gst stream failed after " + std::to_string(capture_->captured()) + " chunks (" + message + ")");
    if (!audio_checked_ && capture_->video_seconds() >= 3.0) {   // an audio branch that never got a sample
      audio_checked_ = true;
      if (!capture_->got_audio() && !no_audio("no audio arrived in the first 3 s of video"))
        return fail("--require-audio: no audio arrived in the first 3 s of video; check the pipeline's audio branch");
    }
    if (capture_->idle_seconds() > args_.read_timeout)
      return fail(std::string(capture_->started() ? "the --gst stream stalled" : "the --gst pipeline produced no frame") +
                  ": no data for " + std::to_string(static_cast<int>(args_.read_timeout)) + " s after " +
                  std::to_string(capture_->captured()) + " chunks (--read-timeout)");
    return false;
  }
  bool fail(const std::string& line) {
    reason_ = "error";
    failure_ = line;
    return true;
  }

  // Stop the pipeline, run what was queued, say what failed, ask the last question, the end event.
  int finish() {
    capture_->stop();
    for (omnisift_live::LiveChunk rest; queue_.take(rest, std::chrono::milliseconds(0));) {
      omnisift::Status st = process(std::move(rest));
      if (!st.ok()) return fail_line(st.to_string());
    }
    c_.partial = capture_->has_partial() && (limit_ < 0 || capture_->captured() < limit_) ? 1 : 0;
    if (!failure_.empty()) std::cerr << "camera_app: " << failure_ << (c_.partial ? "; the partial chunk was discarded" : "") << "\n";
    if (session_.chunks() > 0 || !c_.in_session.empty()) {
      omnisift::Status asked = ask(session_, args_.question, "end", last_index_, events_);
      if (!asked.ok()) return fail_line(asked.to_string());
      report_chunks(session_, c_, queue_, events_, seen_);
    }
    const int64_t captured = capture_->captured();
    const double p50 = omnisift_live::percentile(c_.lags, 0.5), p95 = omnisift_live::percentile(c_.lags, 0.95);
    events_.write("end", {{"reason", reason_}, {"captured", captured}, {"processed", c_.processed},
                          {"dropped", queue_.dropped()}, {"partial", c_.partial}, {"reconnects", 0},
                          {"lag_ms_p50", p50}, {"lag_ms_p95", p95}});
    std::cout << "live: captured " << captured << ", processed " << c_.processed << ", dropped " << queue_.dropped()
              << ", partial " << c_.partial << ", lag p50 " << p50 << " ms, p95 " << p95 << " ms, policy "
              << args_.drop_policy << ", end: " << reason_ << "\n";
    return failure_.empty() ? 0 : 1;
  }

  const LiveArgs& args_;
  omnisift::Session& session_;
  const omnisift::ExportFolder& folder_;
  const omnisift::Manifest& m_;
  Events events_;
  omnisift_live::ChunkQueue queue_;
  std::unique_ptr<omnisift_live::GstCapture> capture_;
  Counters c_;
  int64_t limit_ = -1, seen_ = 0, last_index_ = -1;
  size_t pushed_ahead_ = 0;
  bool audio_checked_ = true;
  std::string reason_ = "seconds", failure_;
};

}  // namespace

int run_live(const LiveArgs& args, omnisift::Session& session, const omnisift::ExportFolder& folder) {
  auto policy = omnisift_live::parse_drop_policy(args.drop_policy);
  if (!policy) return fail_line("--drop-policy must be oldest or thin; got " + args.drop_policy);
  if (args.queue < 1) return fail_line("--queue must be at least 1 chunk");
  LiveRun live(args, session, folder, *policy);
  const std::string error = live.open();
  if (!error.empty()) return fail_line(error);
  return live.run();
}
