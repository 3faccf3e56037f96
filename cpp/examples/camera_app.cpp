// What a camera/robot app does with the omnisift library: open an export folder, push frames and
// microphone PCM as they arrive, ask questions while the video goes on, stream the answers.
//
//   camera_app EXPORT_DIR [--ratio R] [--seconds S] [--question Q] [--ask-every S] [--target T] [--stub]
//              [--context-policy error|sliding] [--window-seconds N] [--max-context N] [--cameras N]
//              [--gst PIPELINE [--require-audio] [--drop-policy oldest|thin] [--queue N] [--events FILE]
//               [--read-timeout S] [--process-delay-ms N]]
//
// --gst PIPELINE reads a live source through GStreamer instead of the synthetic one (built when
// GStreamer's development packages are found; live_app.cpp, docs/cpp.md "Live cameras with
// GStreamer"): the pipeline links its video into `video.` and its audio into `audio.`, e.g.
//   --gst "v4l2src device=/dev/video0 ! video.  pulsesrc ! audio."
// 2-second chunks (2 fps sampled by timestamp, 16 kHz mono audio on the video's clock) go through a
// bounded queue with docs/live.md's drop policy; --events writes its JSON lines. --seconds counts
// source seconds (default: until the stream ends or Ctrl-C).
//
// --ask-every S asks the question every S seconds of capture while the stream goes on (each answer
// ends a user turn; the media after it opens the next); the question is asked once more at the end.
// --context-policy sliding keeps the last --window-seconds of media (or what max_context holds) and
// runs for as long as the camera does (docs/cpp.md, "Context policies").
//
// --cameras N runs N synthetic cameras, a session and a capture thread each, on one set of engines
// loaded once (SharedEngines: each session has its own execution contexts and KV cache); each
// camera's question is asked at the end and the answers printed when all are done.
//
// The media here is synthetic (a moving colour gradient at 2 fps, a 440 Hz tone with bursts),
// delivered the way a capture loop would: one frame every 500 ms, PCM in 100 ms blocks. With
// TensorRT compiled in and engines built (`omnisift-edge build EXPORT_DIR`), the engines run;
// otherwise (or with --stub) the StubBackend stands in: every library call is the same, the
// "answer" is scripted text, and the run shows the pipeline's bookkeeping end to end.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "omnisift/session.h"
#include "omnisift/stub_backend.h"
#include "omnisift/trt_backend.h"
#ifdef OMNISIFT_HAVE_GSTREAMER
#include "live_app.h"
#endif

namespace {

struct Args {
  std::string folder;
  double ratio = -1;   // -1: the export's first
  double seconds = 6;
  std::string question = "What is happening in this video?";
  std::string target;
  bool stub = false;
  double ask_every = 0;          // 0: only at the end
  std::string policy = "error";
  double window_seconds = 0;     // 0: none given
  long max_context = 0;          // 0: the export's
  bool seconds_given = false;
  bool gst = false;
  std::string pipeline, drop_policy = "oldest", events;
  bool require_audio = false;
  int queue = 2, process_delay_ms = 0;
  double read_timeout = 5;
  int cameras = 1;
};

bool parse(int argc, char** argv, Args& a) {
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto next = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    const char* v = nullptr;
    if (k == "--stub") a.stub = true;
    else if (k == "--ratio" && (v = next())) a.ratio = std::atof(v);
    else if (k == "--seconds" && (v = next())) a.seconds = std::atof(v), a.seconds_given = true;
    else if (k == "--gst" && (v = next())) a.pipeline = v, a.gst = true;
    else if (k == "--require-audio") a.require_audio = true;
    else if (k == "--drop-policy" && (v = next())) a.drop_policy = v;
    else if (k == "--queue" && (v = next())) a.queue = std::atoi(v);
    else if (k == "--events" && (v = next())) a.events = v;
    else if (k == "--read-timeout" && (v = next())) a.read_timeout = std::atof(v);
    else if (k == "--process-delay-ms" && (v = next())) a.process_delay_ms = std::atoi(v);
    else if (k == "--question" && (v = next())) a.question = v;
    else if (k == "--target" && (v = next())) a.target = v;
    else if (k == "--ask-every" && (v = next())) a.ask_every = std::atof(v);
    else if (k == "--context-policy" && (v = next())) a.policy = v;
    else if (k == "--window-seconds" && (v = next())) a.window_seconds = std::atof(v);
    else if (k == "--max-context" && (v = next())) a.max_context = std::atol(v);
    else if (k == "--cameras" && (v = next())) a.cameras = std::atoi(v);
    else if (!k.empty() && k[0] != '-' && a.folder.empty()) a.folder = k;
    else return false;
  }
  return !a.folder.empty() && a.cameras >= 1;
}

// A camera: RGB frames of the export's size, a gradient that drifts with time.
class SyntheticCamera {
 public:
  SyntheticCamera(int height, int width, int start = 0)
      : h_(height), w_(width), t_(start), rgb_(static_cast<size_t>(height) * width * 3) {}
  omnisift::FrameView next() {
    for (int y = 0; y < h_; ++y)
      for (int x = 0; x < w_; ++x) {
        uint8_t* p = &rgb_[(static_cast<size_t>(y) * w_ + x) * 3];
        p[0] = static_cast<uint8_t>((x * 255 / w_ + t_ * 16) % 256);
        p[1] = static_cast<uint8_t>((y * 255 / h_) % 256);
        p[2] = static_cast<uint8_t>((t_ * 40) % 256);
      }
    ++t_;
    return {rgb_.data(), h_, w_};
  }

 private:
  int h_, w_, t_;
  std::vector<uint8_t> rgb_;
};

// A microphone: mono float PCM at 16 kHz, a tone with bursts.
class SyntheticMicrophone {
 public:
  std::vector<float> next(size_t n) {
    std::vector<float> block(n);
    for (float& s : block) {
      const double t = static_cast<double>(i_++) / 16000.0;
      s = static_cast<float>((std::fmod(t, 1.0) < 0.3 ? 0.3 : 0.05) * std::sin(2 * M_PI * 440.0 * t));
    }
    return block;
  }

 private:
  int64_t i_ = 0;
};

int fail(const omnisift::Status& st) {
  std::cerr << "camera_app: " << st.to_string() << "\n";
  return 1;
}

// Ask and stream the answer to stdout.
omnisift::Result<omnisift::Answer> ask(omnisift::Session& session, const std::string& question, double at) {
  std::cout << "[" << at << " s] Q: " << question << "\nA: " << std::flush;
  auto answer = session.ask(question, [](const omnisift::TokenEvent& e) {
    std::cout << e.text << std::flush;
    return true;
  });
  std::cout << "\n";
  return answer;
}

// --cameras N: one session per camera on `engines` (loaded once), a capture thread each (camera k's
// gradient starts k frames later), the question asked at the end; answers printed when all are done.
int run_cameras(const Args& args, const std::shared_ptr<const omnisift::ExportFolder>& folder,
                const omnisift::SessionOptions& options, omnisift::SharedEngines& engines, const std::string& loads) {
  const omnisift::Manifest& m = folder->manifest();
  std::vector<std::unique_ptr<omnisift::Session>> sessions;
  for (int k = 0; k < args.cameras; ++k) {
    auto session = omnisift::Session::create(folder, engines, options);
    if (!session.ok()) return fail(session.status());
    sessions.push_back(std::move(session).value());
  }
  std::vector<omnisift::Status> status(sessions.size());
  std::vector<omnisift::Answer> answers(sessions.size());
  std::vector<std::thread> threads;
  for (size_t k = 0; k < sessions.size(); ++k)
    threads.emplace_back([&, k] {
      omnisift::Session& session = *sessions[k];
      SyntheticCamera camera(m.height, m.width, static_cast<int>(k));
      SyntheticMicrophone mic;
      for (int step = 0; step < static_cast<int>(args.seconds * 10) && status[k].ok(); ++step) {
        if (step % 5 == 0) status[k] = session.push_frame(camera.next());
        const std::vector<float> pcm = mic.next(1600);
        if (status[k].ok()) status[k] = session.push_audio(pcm.data(), pcm.size());
      }
      if (!status[k].ok()) return;
      auto answer = session.ask(args.question);
      if (answer.ok()) answers[k] = *answer;
      else status[k] = answer.status();
    });
  for (std::thread& t : threads) t.join();
  int64_t kv = 0;
  for (size_t k = 0; k < sessions.size(); ++k) {
    if (!status[k].ok()) return fail(status[k]);
    std::cout << "camera " << k << ": chunks " << sessions[k]->chunks() << ", KV " << sessions[k]->kv_length()
              << " tokens\nQ: " << args.question << "\nA: " << answers[k].text << "\n";
    kv += sessions[k]->kv_length();
  }
  std::cout << sessions.size() << " cameras on one set of engines (" << loads << "), " << kv
            << " KV tokens in all, one KV cache per session\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  if (!parse(argc, argv, args)) {
    std::cerr << "usage: camera_app EXPORT_DIR [--ratio R] [--seconds S] [--question Q] [--ask-every S] [--target T] "
                 "[--stub] [--context-policy error|sliding] [--window-seconds N] [--max-context N] [--gst PIPELINE "
                 "[--require-audio] [--drop-policy oldest|thin] [--queue N] [--events FILE] [--read-timeout S] "
                 "[--process-delay-ms N]] [--cameras N]\n";
    return 2;
  }
#ifndef OMNISIFT_HAVE_GSTREAMER
  if (args.gst) {
    std::cerr << "camera_app: built without GStreamer, so --gst is not available; install libgstreamer1.0-dev and "
                 "libgstreamer-plugins-base1.0-dev, then rebuild (cmake -DOMNISIFT_WITH_GSTREAMER=ON)\n";
    return 1;
  }
#endif
  if (args.gst && args.cameras > 1) {
    std::cerr << "camera_app: --cameras N runs N synthetic cameras; --gst reads one live source (give one or the other)\n";
    return 1;
  }
  auto policy = omnisift::parse_context_policy(args.policy);
  if (!policy.ok()) return fail(policy.status());
  // 1. open the export: manifest (schema + checksums), tokenizer, chat prompt, embeddings
  auto folder = omnisift::ExportFolder::open(args.folder);
  if (!folder.ok()) return fail(folder.status());
  const omnisift::Manifest& m = (*folder)->manifest();
  omnisift::SessionOptions options;
  options.ratio = args.ratio > 0 ? args.ratio : m.ratios.front().ratio;
  options.max_new_tokens = 64;
  options.max_context = args.max_context;
  options.context.policy = *policy;
  if (args.window_seconds > 0) options.context.window_seconds = args.window_seconds;

  // 2. the engines, loaded once: TensorRT engines when built with TensorRT, else the stand-in;
  //    each session gets its own backend on them (execution contexts, KV cache)
  std::shared_ptr<omnisift::SharedEngines> engines;
  const bool stub = args.stub || !omnisift::trt_available();
  if (!stub) {
    omnisift::TrtOptions trt;
    trt.target = args.target;
    auto loaded = omnisift::load_trt_engines(args.folder, m, options.ratio, trt);
    if (!loaded.ok()) return fail(loaded.status());
    engines = std::move(loaded).value();
  } else {
    auto budget = omnisift::ChunkBudget::create(m, options.ratio);
    if (!budget.ok()) return fail(budget.status());
    auto script = (*folder)->tokenizer().encode("(stub backend: no TensorRT in this run)");
    if (!script.ok()) return fail(script.status());
    script->push_back(m.stop_token_ids.front());
    std::cerr << "camera_app: stub backend (" << (args.stub ? "--stub" : "built without TensorRT") << ")\n";
    engines = omnisift::StubEngines::load(m, budget->kept_per_chunk, *script);
  }
  if (args.cameras > 1)
    return run_cameras(args, *folder, options, *engines,
                       stub ? "stub engine loads: " + std::to_string(omnisift::StubEngines::loads()) : "TensorRT engines loaded once");

  // 3. a session on its own backend: the system prompt is prefilled now
  auto session = omnisift::Session::create(*folder, *engines, options);
  if (!session.ok()) return fail(session.status());

#ifdef OMNISIFT_HAVE_GSTREAMER
  if (args.gst) {   // a live source instead of the synthetic one below
    LiveArgs live;
    live.pipeline = args.pipeline;
    live.require_audio = args.require_audio;
    live.drop_policy = args.drop_policy;
    live.queue = args.queue;
    live.events = args.events;
    live.read_timeout = args.read_timeout;
    live.seconds = args.seconds_given ? args.seconds : 0;
    live.ask_every = args.ask_every;
    live.question = args.question;
    live.process_delay_ms = args.process_delay_ms;
    live.backend = stub ? "stub" : "tensorrt";
    live.ratio = options.ratio;
    return run_live(live, **session, **folder);
  }
#endif
  // 4. the capture loop: a frame every 500 ms, PCM every 100 ms; chunks run as they complete; with
  //    --ask-every, a question every S seconds while the video goes on (the next media opens a new turn)
  SyntheticCamera camera(m.height, m.width);
  SyntheticMicrophone mic;
  const int steps = static_cast<int>(args.seconds * 10);
  const int ask_steps = static_cast<int>(args.ask_every * 10);
  int asked = 0;
  for (int step = 0; step < steps; ++step) {
    if (step % 5 == 0) {
      omnisift::Status st = (*session)->push_frame(camera.next());
      if (!st.ok()) return fail(st);
    }
    const std::vector<float> pcm = mic.next(1600);
    omnisift::Status st = (*session)->push_audio(pcm.data(), pcm.size());
    if (st.code() == omnisift::StatusCode::kContextFull) {
      std::cerr << "camera_app: context full, asking now (" << st.message()
                << "); --context-policy sliding keeps streaming\n";
      break;
    }
    if (!st.ok()) return fail(st);
    if (ask_steps > 0 && (step + 1) % ask_steps == 0 && step + 1 < steps) {
      auto answer = ask(**session, args.question, (step + 1) / 10.0);
      if (!answer.ok()) return fail(answer.status());
      ++asked;
    }
  }

  // 5. ask at the end; a question pads a partial last chunk and closes the turn's video span
  auto answer = ask(**session, args.question, steps / 10.0);
  if (!answer.ok()) return fail(answer.status());
  const omnisift::KvWindow& window = (*session)->window();
  std::cout << "chunks " << (*session)->chunks() << ", KV " << (*session)->kv_length() << " of "
            << window.max_context() << " tokens, " << (*session)->budget().kept_per_chunk << " kept per chunk at ratio "
            << options.ratio << ", " << asked + 1 << " questions, answer " << answer->ids.size() << " tokens, policy "
            << omnisift::context_policy_name(options.context.policy) << " (" << window.evicted_chunks()
            << " chunks evicted, positions re-based by " << window.base() << ")\n";
  return 0;
}
