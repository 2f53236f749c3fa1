using System.Text.Json;
using KvSharp.Tokenization;

namespace KvSharp.Evaluation.Tasks.LEval;

/// <summary>
/// L-Eval long-document tasks (../shared/data/leval): each line is a document (<c>input</c>) with several questions
/// (<c>instructions</c>) and reference answers (<c>outputs</c>). A document becomes one multi-request sample: its
/// context is compressed once and every question is asked against it. Multiple-choice tasks (QuALITY, TOEFL, Coursera)
/// are scored by choice accuracy, open QA by RULER's string_match_part, summarization (gov_report_summ, meeting_summ,
/// news_summ, patent_summ, review_summ, tv_show_summ) by ROUGE-L (ROUGE-1/2 recorded beside it), an answer running to
/// its first blank line or its budget. Documents longer than the model's context are cut in the middle (LongBench's
/// convention), keeping their start and end.
/// </summary>
public static class LEvalTasks
{
    private static readonly Dictionary<string, (string Folder, ScoreKind Score, int MaxNewTokens)> Known = new(StringComparer.Ordinal)
    {
        ["quality"] = ("Closed-ended-tasks", ScoreKind.Choice, 16),
        ["tpo"] = ("Closed-ended-tasks", ScoreKind.Choice, 16),
        ["coursera"] = ("Closed-ended-tasks", ScoreKind.Choice, 16),
        ["topic_retrieval_longchat"] = ("Closed-ended-tasks", ScoreKind.StringMatchPart, 32),
        ["natural_question"] = ("Open-ended-tasks", ScoreKind.StringMatchPart, 32),
        ["financial_qa"] = ("Open-ended-tasks", ScoreKind.StringMatchPart, 32),
        ["scientific_qa"] = ("Open-ended-tasks", ScoreKind.StringMatchPart, 32),
        ["multidoc_qa"] = ("Open-ended-tasks", ScoreKind.StringMatchPart, 32),
        ["legal_contract_qa"] = ("Open-ended-tasks", ScoreKind.StringMatchPart, 32),
        ["gov_report_summ"] = ("Open-ended-tasks", ScoreKind.RougeL, 256),
        ["meeting_summ"] = ("Open-ended-tasks", ScoreKind.RougeL, 256),
        ["news_summ"] = ("Open-ended-tasks", ScoreKind.RougeL, 256),
        ["patent_summ"] = ("Open-ended-tasks", ScoreKind.RougeL, 256),
        ["review_summ"] = ("Open-ended-tasks", ScoreKind.RougeL, 256),
        ["tv_show_summ"] = ("Open-ended-tasks", ScoreKind.RougeL, 256),
    };

    /// <summary>The task names <see cref="Load"/> knows.</summary>
    public static IReadOnlyCollection<string> Names => Known.Keys;

    /// <summary>The question text asked after the document.</summary>
    public static string Question(string instruction) => $"Question: {instruction.Trim()}\nAnswer:";

    /// <summary>
    /// The first <paramref name="documents"/> documents of <paramref name="task"/> under <paramref name="levalDir"/>, each cut
    /// to fit <paramref name="maxContext"/> tokens of <paramref name="tokenizer"/> with its longest question and answer budget.
    /// </summary>
    public static IReadOnlyList<EvalSample> Load(string levalDir, string task, int documents, ITokenizer tokenizer, int maxContext)
    {
        if (!Known.TryGetValue(task, out var info))
            throw new KvSharpException($"L-Eval task '{task}': unknown or not scored by string match/choice/ROUGE (known: {string.Join(", ", Known.Keys.Order())})");
        string path = Path.Combine(levalDir, info.Folder, task + ".jsonl");
        if (!File.Exists(path)) throw new KvSharpException($"{path}: L-Eval task file not found");
        var samples = new List<EvalSample>();
        int lineNumber = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNumber++;
            if (samples.Count >= documents) break;
            if (string.IsNullOrWhiteSpace(line)) continue;
            Document doc;
            try
            {
                doc = JsonSerializer.Deserialize<Document>(line, JsonlFile.Options) ?? throw new JsonException("null");
            }
            catch (JsonException e)
            {
                throw new KvSharpException($"{path}:{lineNumber}: not an L-Eval record ({e.Message})", e);
            }
            if (doc.Input is null || doc.Instructions is null || doc.Outputs is null || doc.Instructions.Count != doc.Outputs.Count)
                throw new KvSharpException($"{path}:{lineNumber}: an L-Eval record needs 'input' and as many 'instructions' as 'outputs'");
            var queries = doc.Instructions.Zip(doc.Outputs, (q, a) => new EvalQuery(Question(q), [a])).ToList();
            int longestQuestion = queries.Max(q => tokenizer.Encode(q.Question, addSpecial: false).Length);
            int budget = maxContext - longestQuestion - info.MaxNewTokens - 2;
            string context = "Read the document and answer the questions about it.\n\n" + FitMiddle(doc.Input, budget, tokenizer) + "\n\n";
            // A summary is a paragraph or more: it ends at a blank line (or its budget), not at the first newline.
            samples.Add(new EvalSample((lineNumber - 1).ToString(System.Globalization.CultureInfo.InvariantCulture), task, context, queries, info.Score, info.MaxNewTokens)
            {
                StopString = info.Score == ScoreKind.RougeL ? "\n\n" : "\n",
            });
        }
        return samples;
    }

    /// <summary>
    /// <paramref name="text"/> if it has at most <paramref name="maxTokens"/> tokens (BOS included), else its first and
    /// last halves of that many tokens, decoded back to text.
    /// </summary>
    public static string FitMiddle(string text, int maxTokens, ITokenizer tokenizer)
    {
        if (maxTokens < 16) throw new KvSharpException($"the model's context leaves only {maxTokens} tokens for the document");
        // Leave room for the instruction line around the document and for re-tokenization drift at the cut.
        int budget = maxTokens - 32;
        var ids = tokenizer.Encode(text, addSpecial: false);
        if (ids.Length <= budget) return text;
        int half = budget / 2;
        return tokenizer.Decode(ids.Take(half)) + tokenizer.Decode(ids.Skip(ids.Length - half));
    }

    private sealed record Document(string? Input, IReadOnlyList<string>? Instructions, IReadOnlyList<string>? Outputs);
}
