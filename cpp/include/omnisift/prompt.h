// Chat-prompt pieces around the video span, as Python's omnisift_edge.model.prompt.
//
// Choice (docs/cpp.md): C++ does not run a Jinja engine. It renders Qwen2.5-Omni's chat template
// for the one message shape the pipeline uses, [system, user: (video, question)] with the
// generation prompt, and refuses an export whose chat template lacks the fragments that rendering
// relies on (kUnsupported). Golden files from Python's build_prompt/followup_ids check the ids.
//   prefix: <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n
//   suffix: {question}<|im_end|>\n<|im_start|>assistant\n
//   follow-up: <|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n
//   new turn with video (Python's turn_pieces): prefix <|im_end|>\n<|im_start|>user\n, then the
//   turn's video, then the suffix {question}<|im_end|>\n<|im_start|>assistant\n
// {system} and {question} are untrusted text (an app's user, a network client): control tokens
// written in them (<|im_end|>, <|im_start|>, <|AUDIO|>, ...) are tokenized as their characters,
// so a question cannot open a fake system turn (Tokenizer::encode's split_special_tokens).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "omnisift/manifest.h"
#include "omnisift/status.h"
#include "omnisift/tokenizer.h"

namespace omnisift {

// Python's DEFAULT_SYSTEM_PROMPT.
extern const char* const kDefaultSystemPrompt;

class ChatPrompt {
 public:
  // Checks the chat template (chat_template.json or tokenizer_config.json's chat_template in
  // `tokenizer_folder`; none: Qwen2.5-Omni's built-in one is assumed, as Python does).
  static Result<ChatPrompt> create(const Tokenizer& tokenizer, const LayoutSpec& spec,
                                   const std::string& tokenizer_folder);
  // Without a folder: trusts that the tokenizer's template is Qwen2.5-Omni's.
  static ChatPrompt unchecked(const Tokenizer& tokenizer, const LayoutSpec& spec);

  // Ids before <|vision_bos|> (system = nullopt: the template's own default system message).
  Result<std::vector<int64_t>> prefix_ids(const std::optional<std::string>& system = std::string(kDefaultSystemPrompt)) const;
  // Ids after <|vision_eos|>: the question and the assistant generation prompt.
  Result<std::vector<int64_t>> suffix_ids(const std::string& question) const;
  // Ids that close an answer (whose stopping <|im_end|> was never fed) and ask `question`.
  Result<std::vector<int64_t>> followup_ids(const std::string& question) const;

  // Ids that close an answer and open a user turn whose video follows (before its <|vision_bos|>).
  Result<std::vector<int64_t>> turn_prefix_ids() const;
  // Ids after that turn's <|vision_eos|>: the question and the generation prompt.
  Result<std::vector<int64_t>> turn_suffix_ids(const std::string& question) const;

  static std::string prefix_text(const std::optional<std::string>& system);
  static std::string suffix_text(const std::string& question);
  static std::string followup_text(const std::string& question);
  static std::string turn_prefix_text();

 private:
  ChatPrompt(const Tokenizer& tokenizer, const LayoutSpec& spec) : tokenizer_(&tokenizer), spec_(spec) {}
  struct TextPart {
    std::string text;
    bool untrusted;   // control tokens in it are text
  };
  Result<std::vector<int64_t>> encode_parts(const std::vector<TextPart>& parts, const char* what) const;
  const Tokenizer* tokenizer_;
  LayoutSpec spec_;
};

}  // namespace omnisift
