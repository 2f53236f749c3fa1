namespace KvSharp.Evaluation.Tasks;

/// <summary>
/// Splits a RULER prompt (context, question and answer prefix in one text) into the context a press may
/// compress and the question asked after it, at the last occurrence of a known question opening.
/// </summary>
public static class PromptSplitter
{
    // Openings of the questions of RULER's templates (niah, variable tracking, common/frequent words, QA)
    // and of the JSON key-value task. The question starts at the opening's first non-newline character.
    private static readonly string[] QuestionOpenings =
    [
        "\nWhat is the special magic",
        "\nWhat are all the special magic",
        "\nQuestion:",
        "\nKey: \"",
        "\nAnswer the question based on the given documents.",
    ];

    /// <summary>
    /// The context and question of <paramref name="input"/>. When no known opening is found, the whole text is
    /// the context and the question is empty (the runner then asks with the prompt's last token).
    /// </summary>
    public static (string Context, string Question) Split(string input)
    {
        ArgumentNullException.ThrowIfNull(input);
        int best = -1;
        foreach (var opening in QuestionOpenings)
        {
            int i = input.LastIndexOf(opening, StringComparison.Ordinal);
            if (i > best) best = i;
        }
        if (best < 0) return (input, "");
        int start = best + 1; // the newline stays with the context, as it ends the document
        return (input[..start], input[start..]);
    }
}
