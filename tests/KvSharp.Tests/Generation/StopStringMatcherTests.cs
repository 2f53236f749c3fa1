using KvSharp.Generation;

namespace KvSharp.Tests.Generation;

public class StopStringMatcherTests
{
    [Fact]
    public void StopInsideOnePiece_EmitsTextBeforeIt()
    {
        var m = new StopStringMatcher(["END"]);
        var r = m.Push("Hello END world");
        Assert.True(r.Stopped);
        Assert.Equal("Hello ", r.SafeText);
        Assert.Equal("END", r.StopString);
        Assert.Throws<InvalidOperationException>(() => m.Push("more"));
    }

    [Fact]
    public void StopSpanningThreePieces_IsNeverPrinted()
    {
        var m = new StopStringMatcher(["<|end|>"]);
        var r1 = m.Push("Hi <|");
        Assert.Equal("Hi ", r1.SafeText);
        Assert.False(r1.Stopped);
        Assert.Equal("<|", m.Pending);
        var r2 = m.Push("en");
        Assert.Equal("", r2.SafeText);
        var r3 = m.Push("d|> trailing");
        Assert.True(r3.Stopped);
        Assert.Equal("", r3.SafeText);
        Assert.Equal("", m.Flush());
    }

    [Fact]
    public void HeldTextIsReleasedWhenItStopsMatching()
    {
        var m = new StopStringMatcher(["abc"]);
        Assert.Equal("x", m.Push("xa").SafeText);
        Assert.Equal("", m.Push("b").SafeText);
        Assert.Equal("abd", m.Push("d").SafeText);
        Assert.Equal("", m.Pending);
    }

    [Fact]
    public void SelfOverlappingStop_IsFoundAfterFalseStart()
    {
        var m = new StopStringMatcher(["aab"]);
        Assert.Equal("", m.Push("a").SafeText);
        Assert.Equal("", m.Push("a").SafeText);
        Assert.Equal("a", m.Push("a").SafeText); // "aaa": only the last "aa" can still start "aab"
        var r = m.Push("b");
        Assert.True(r.Stopped);
        Assert.Equal("", r.SafeText);
    }

    [Fact]
    public void OverlappingCandidates_FirstToCompleteWinsWhateverTheSplit()
    {
        // "bc" completes at character 3, before "abcd" could at 4.
        var whole = new StopStringMatcher(["abcd", "bc"]).Push("abcd");
        Assert.Equal(("a", true, "bc"), (whole.SafeText, whole.Stopped, whole.StopString));

        var m = new StopStringMatcher(["abcd", "bc"]);
        Assert.Equal("", m.Push("a").SafeText);
        Assert.Equal("", m.Push("b").SafeText);
        var r = m.Push("c");
        Assert.Equal(("a", true, "bc"), (r.SafeText, r.Stopped, r.StopString));

        // Same end: the longer (earlier-starting) one is reported.
        var sameEnd = new StopStringMatcher(["c", "abc"]).Push("xabc");
        Assert.Equal(("x", "abc"), (sameEnd.SafeText, sameEnd.StopString));
    }

    [Fact]
    public void FlushAtEnd_ReleasesHeldText()
    {
        var m = new StopStringMatcher(["END"]);
        Assert.Equal("the ", m.Push("the E").SafeText);
        Assert.Equal("", m.Push("N").SafeText);
        Assert.Equal("EN", m.Pending);
        Assert.Equal("EN", m.Flush());
        Assert.Equal("", m.Flush());
    }

    [Fact]
    public void NoStopStrings_PassesTextThrough()
    {
        var m = new StopStringMatcher([]);
        Assert.Equal("anything", m.Push("anything").SafeText);
        Assert.Equal("", m.Flush());
    }

    [Fact]
    public void EmptyStopString_IsRejected()
    {
        var ex = Assert.Throws<KvSharpException>(() => new StopStringMatcher(["ok", ""]));
        Assert.Contains("--stop", ex.Message);
    }

    [Fact]
    public void RandomSplits_AgreeWithCharacterByCharacterReference()
    {
        string[] stops = ["ab", "bca", "cc", "cabb"];
        var rng = new Random(2024);
        for (int trial = 0; trial < 500; trial++)
        {
            string text = new(Enumerable.Range(0, rng.Next(0, 12)).Select(_ => "abc"[rng.Next(3)]).ToArray());

            // Reference: the first character position at which some stop string ends.
            string expectedText = text;
            string? expectedStop = null;
            for (int end = 1; end <= text.Length && expectedStop == null; end++)
            {
                var hit = stops.Where(s => text[..end].EndsWith(s, StringComparison.Ordinal)).OrderByDescending(s => s.Length).FirstOrDefault();
                if (hit != null) { expectedStop = hit; expectedText = text[..(end - hit.Length)]; }
            }

            var m = new StopStringMatcher(stops);
            var output = new System.Text.StringBuilder();
            string? stop = null;
            int at = 0;
            while (at < text.Length && stop == null)
            {
                int len = rng.Next(1, 4);
                var r = m.Push(text.Substring(at, Math.Min(len, text.Length - at)));
                at += len;
                output.Append(r.SafeText);
                stop = r.StopString;
            }
            if (stop == null) output.Append(m.Flush());
            Assert.Equal(expectedStop, stop);
            Assert.Equal(expectedText, output.ToString());
        }
    }
}
