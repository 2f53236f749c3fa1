using System.Text.Json;
using KvSharp.Generation.Chat;

namespace KvSharp.Tests.Generation;

public class ChatTemplateTests
{
    private static readonly ChatMessage[] Conversation =
    [
        ChatMessage.System("You are terse."),
        ChatMessage.User("Hi"),
        ChatMessage.Assistant("Hello!"),
        ChatMessage.User("Bye"),
    ];

    // SmolLM2-Instruct's template (its tokenizer_config.json is not in ../shared; this is the published text).
    private const string SmolLm2Template =
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    private static string SharedTemplate(string model)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(RepoPaths.SharedFile("tokenizers", model, "tokenizer_config.json")));
        return doc.RootElement.GetProperty("chat_template").GetString()!;
    }

    [Fact]
    public void Llama3_FromSharedTemplate_MultiTurnWithSystem()
    {
        var t = ChatTemplates.Detect(SharedTemplate("llama3"), "llama");
        Assert.IsType<Llama3ChatTemplate>(t);
        Assert.True(t.IncludesBos);
        var messages = Conversation.Select(m => m.Role == "assistant" ? m with { Content = "  Hello!\n" } : m).ToArray();
        Assert.Equal(
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>" +
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>" +
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>" +
            "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>" +
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            t.Format(messages, addGenerationPrompt: true));
    }

    [Fact]
    public void Qwen3_FromSharedTemplate_ChatMlWithoutDefaultSystemAndWithoutOldReasoning()
    {
        var t = ChatTemplates.Detect(SharedTemplate("qwen3"), "qwen3");
        var chatml = Assert.IsType<ChatMlTemplate>(t);
        Assert.False(t.IncludesBos);
        Assert.Null(chatml.DefaultSystemPrompt);
        Assert.True(chatml.StripReasoningFromHistory);
        var messages = Conversation.Select(m => m.Role == "assistant" ? m with { Content = "<think>\nhmm\n</think>\n\nHello!" } : m).ToArray();
        Assert.Equal(
            "<|im_start|>system\nYou are terse.<|im_end|>\n" +
            "<|im_start|>user\nHi<|im_end|>\n" +
            "<|im_start|>assistant\nHello!<|im_end|>\n" +
            "<|im_start|>user\nBye<|im_end|>\n" +
            "<|im_start|>assistant\n",
            t.Format(messages, addGenerationPrompt: true));
    }

    [Fact]
    public void SmolLm2_DefaultSystemPromptOnlyWhenNoneGiven()
    {
        var t = Assert.IsType<ChatMlTemplate>(ChatTemplates.Detect(SmolLm2Template, "llama"));
        Assert.Equal("You are a helpful AI assistant named SmolLM, trained by Hugging Face", t.DefaultSystemPrompt);
        Assert.Equal(
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n" +
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
            t.Format([ChatMessage.User("Hi")], addGenerationPrompt: true));
        Assert.Equal(
            "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n" +
            "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n",
            t.Format(Conversation, addGenerationPrompt: false));
    }

    [Fact]
    public void Llama2_FoldsSystemIntoFirstTurn()
    {
        var t = ChatTemplates.Detect("{{ bos_token + '[INST] ' + '<<SYS>>\\n' }}", "llama");
        Assert.IsType<Llama2ChatTemplate>(t);
        Assert.True(t.IncludesBos);
        Assert.Equal(
            "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] Bye [/INST]",
            t.Format(Conversation, addGenerationPrompt: true));
        Assert.Equal("<s>[INST] Hi [/INST]", t.Format([ChatMessage.User(" Hi ")], true));
    }

    [Fact]
    public void Llama2_RejectsNonAlternatingRoles()
    {
        var ex = Assert.Throws<KvSharpException>(() =>
            new Llama2ChatTemplate().Format([ChatMessage.User("a"), ChatMessage.User("b")], true));
        Assert.Contains("alternate", ex.Message);
    }

    [Fact]
    public void Plain_LabelsTurns()
    {
        Assert.Equal("You are terse.\n\nUser: Hi\nAssistant: Hello!\nUser: Bye\nAssistant:",
            new PlainChatTemplate().Format(Conversation, addGenerationPrompt: true));
    }

    [Theory]
    [InlineData(null, "qwen2", "chatml")]
    [InlineData("", "Qwen3", "chatml")]
    [InlineData(null, "llama", "plain")]
    [InlineData("{{ messages }}", "llama", "plain")]
    [InlineData("<|start_header_id|>", "qwen2", "llama3")]
    public void Detect_FallsBackToArchitectureThenPlain(string? template, string architecture, string expected)
    {
        Assert.Equal(expected, ChatTemplates.Detect(template, architecture).Name);
    }

    [Fact]
    public void ByName_KnownAndUnknown()
    {
        foreach (var name in ChatTemplates.Names) Assert.Equal(name, ChatTemplates.ByName(name).Name);
        Assert.Equal("llama3", ChatTemplates.ByName("Llama3").Name);
        var ex = Assert.Throws<KvSharpException>(() => ChatTemplates.ByName("vicuna"));
        Assert.Contains("vicuna", ex.Message);
        Assert.Contains("chatml, llama3, llama2, plain", ex.Message);
    }
}
