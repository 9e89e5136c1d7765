"""Writes samples/questions.parquet: a small Chinese question corpus for trying qdedup; and the default
int8 calibration set, transforms/calibration_pairs.csv, from the same questions.

Hand-written questions (this project's own text), each with a paraphrase that
shares little wording, plus exact copies, near copies (width, punctuation,
spacing) and bad rows of every kind the reader rejects. Deterministic: the
same file every time.

    python samples/make_sample.py [OUT.parquet]
    python samples/make_sample.py --label SHEET.csv LABELLED.csv   # a review sheet labelled by the sample's truth

The calibration set (`--precision int8`, transforms/int8.py) pairs each question with its paraphrase,
with the next question's paraphrase and with a decorated copy of itself, and each single question
with a question of the list: pairs like those blocking makes, same meaning and not.
"""
from __future__ import annotations

import csv
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq

# (question, paraphrase): same meaning, different words.
PARAPHRASES = [
    ("信用卡怎么提高额度？", "如何申请提升信用卡的可用额度"),
    ("银行卡丢了应该怎么办？", "借记卡不见了要怎么处理"),
    ("贷款提前还款有违约金吗？", "提前还清贷款要不要付罚金"),
    ("怎样修改手机银行登录密码？", "手机银行的登录密码在哪里改"),
    ("转账到账需要多长时间？", "汇款一般多久能到对方账户"),
    ("为什么我的借款申请被拒绝了？", "借钱审核没通过是什么原因"),
    ("还款日可以更改吗？", "每月还钱的日期能不能调整"),
    ("逾期一天会影响征信吗？", "晚还款一天会不会上征信记录"),
    ("如何查询我的信用报告？", "个人征信报告在什么地方能查到"),
    ("开通网银需要带什么证件？", "办理网上银行要准备哪些材料"),
    ("怎么取消自动扣款？", "自动代扣业务如何关闭"),
    ("微信零钱怎么提现到银行卡？", "把微信余额转到银行卡的方法"),
    ("支付宝花呗怎么开通？", "如何启用花呗功能"),
    ("房贷利率是多少？", "买房贷款的利息怎么算"),
    ("存款利息怎么计算？", "定期存钱的利息是如何算出来的"),
    ("外币可以在网上兑换吗？", "能不能通过网络换外汇"),
    ("如何注销不用的信用卡？", "不想用的信用卡怎么销户"),
    ("短信验证码收不到怎么办？", "手机一直接收不到验证短信"),
    ("怎么减肥最有效？", "什么方法瘦身效果最好"),
    ("晚上睡不着觉怎么办？", "失眠了有什么好办法"),
    ("感冒了吃什么好得快？", "得了感冒吃哪些东西恢复快"),
    ("每天喝多少水比较健康？", "一天应该喝几杯水才合适"),
    ("长时间看电脑眼睛干涩怎么缓解？", "对着屏幕太久眼睛发干如何改善"),
    ("孩子发烧到三十九度要去医院吗？", "小孩体温39度需不需要看医生"),
    ("高血压患者饮食要注意什么？", "血压高的人吃东西有哪些禁忌"),
    ("跑步膝盖疼是什么原因？", "为什么一跑步膝关节就痛"),
    ("怎样才能提高英语口语？", "练好英语口语有什么方法"),
    ("考研需要准备多长时间？", "备战研究生考试要花多久"),
    ("如何快速记住单词？", "背单词有哪些高效的技巧"),
    ("小学生怎么培养阅读习惯？", "怎样让小学生爱上读书"),
    ("大学四级多少分算通过？", "英语四级考到几分才算过"),
    ("自学编程应该从哪门语言开始？", "零基础学写代码先学什么语言好"),
    ("北京到上海坐高铁要多久？", "从北京乘高速列车去上海需要几个小时"),
    ("护照过期了怎么办理续签？", "护照到期以后如何换发新的"),
    ("出国旅游需要买保险吗？", "去国外玩有没有必要买旅行险"),
    ("飞机上可以带充电宝吗？", "充电宝能不能带上飞机"),
    ("火车票改签怎么收费？", "高铁票改日期要不要交手续费"),
    ("酒店入住需要押金吗？", "住宾馆时要不要交订金"),
    ("去云南旅游什么季节最好？", "哪个月份去云南玩最合适"),
    ("自驾游需要准备哪些东西？", "开车出去玩要带些什么"),
    ("手机充不进电是什么原因？", "为什么我的手机没法充电"),
    ("电脑开机很慢怎么解决？", "笔记本启动速度太慢如何处理"),
    ("路由器怎么重新设置密码？", "无线网络的密码在哪里修改"),
    ("怎么把照片从手机传到电脑？", "手机里的图片如何导到电脑上"),
    ("微信聊天记录删除了还能恢复吗？", "误删的微信消息能找回来吗"),
    ("苹果手机怎么截屏？", "iphone如何截取屏幕画面"),
    ("打印机连不上电脑怎么办？", "电脑识别不到打印机该怎么处理"),
    ("如何清理手机内存？", "手机存储空间不够怎么腾出来"),
    ("电脑中病毒了怎么办？", "计算机被病毒感染后如何处理"),
    ("网速很慢是什么原因？", "为什么上网速度特别慢"),
    ("红烧肉怎么做才好吃？", "美味红烧肉的做法是什么"),
    ("米饭煮糊了怎么去掉糊味？", "饭烧焦了有什么办法除去焦味"),
    ("鸡蛋煮多久才熟？", "水煮蛋要煮几分钟"),
    ("西瓜怎么挑选才甜？", "如何挑到一个甜的西瓜"),
    ("冰箱里的异味怎么去除？", "电冰箱有臭味如何消除"),
    ("衣服上的油渍怎么洗掉？", "油污沾到衣服上怎么清洗"),
    ("新房装修完多久可以入住？", "房子装修好之后要等多久才能搬进去"),
    ("养猫需要准备什么？", "第一次养猫咪要买哪些东西"),
    ("狗狗不吃东西怎么回事？", "为什么我家的狗没有食欲"),
    ("多肉植物怎么浇水？", "多肉应该多久浇一次水"),
    ("社保断交了有什么影响？", "社会保险停缴会带来哪些后果"),
    ("公积金怎么提取？", "住房公积金取出来的流程是什么"),
    ("个人所得税怎么申报退税？", "个税退税要如何办理"),
    ("离职后档案放在哪里？", "辞职以后人事档案怎么处理"),
    ("试用期可以随时辞职吗？", "在试用期内能不能马上离职"),
    ("劳动合同到期不续签有补偿吗？", "合同期满公司不续约要给赔偿金吗"),
    ("驾照扣满十二分怎么办？", "驾驶证12分扣完了该如何处理"),
    ("车辆年检需要带什么？", "汽车年审要准备哪些材料"),
    ("新车多久需要第一次保养？", "刚买的车首保是在什么时候"),
    ("违章停车罚款多少钱？", "乱停车一次要罚多少"),
    ("怎么申请专利？", "申请专利的流程是什么"),
    ("营业执照怎么办理？", "开公司要怎么领取营业执照"),
    ("孕妇可以喝咖啡吗？", "怀孕期间能不能喝咖啡"),
    ("宝宝几个月可以添加辅食？", "婴儿多大开始吃辅食比较好"),
    ("怎样缓解工作压力？", "工作压力太大怎么放松"),
    ("如何提高睡眠质量？", "怎么才能睡得更好"),
    ("吉他初学者怎么练习？", "刚开始学吉他应该如何练"),
    ("围棋的基本规则是什么？", "下围棋有哪些基本规定"),
    ("世界上最高的山是哪座？", "地球上海拔最高的山峰叫什么"),
    ("一年有多少个节气？", "二十四节气一共有几个"),
]

# Questions with no duplicate in the corpus.
SINGLES = [
    "明天北京会下雨吗？", "有什么好看的科幻电影推荐？", "足球比赛一场踢多久？", "熊猫主要吃什么？",
    "如何制作一张简历？", "月球离地球有多远？", "为什么天空是蓝色的？", "茶叶应该怎么保存？",
    "怎么给自行车打气？", "钢琴有多少个键？", "海水为什么是咸的？", "蜜蜂是怎么酿蜜的？",
    "如何在家种植番茄？", "长城有多长？", "油画和水彩画有什么区别？", "游泳时怎么换气？",
    "象棋里的马怎么走？", "如何写好一篇议论文？", "地铁末班车是几点？", "家里停电了先检查什么？",
]

TOO_LONG = "这是一个非常长的问题" * 120  # 1,200 characters: over the default limit


def build_rows() -> list[tuple[object, object]]:
    rows: list[tuple[object, object]] = []
    for i, (question, paraphrase) in enumerate(PARAPHRASES):
        rows += [(None, question), (None, paraphrase)]
        if i % 3 == 0:
            rows.append((None, question))  # exact copy
        if i % 4 == 1:  # near copy: full-width punctuation and spacing changed
            rows.append((None, "  " + question.replace("？", "?") + " "))
        if i % 5 == 2:
            rows.append((None, "【求助】" + paraphrase + "！！"))
    rows += [(None, text) for text in SINGLES]
    rows = [(1000 + i, text) for i, (_, text) in enumerate(rows)]
    rows += [
        (2001, None),          # null_text
        (2002, ""),            # empty_text
        (2003, "   \t  "),     # empty_text (whitespace only)
        (2004, TOO_LONG),      # text_too_long
        (None, "没有编号的问题"),  # null_id
        (1000, "重复编号的问题"),  # duplicate_id: 1000 is already used
        (2005, "？？！！。。"),   # empty_after_normalization
    ]
    return rows


def write_sample(path: str) -> None:
    rows = build_rows()
    table = pa.table({"id": pa.array([r[0] for r in rows], pa.int64()),
                      "question": pa.array([r[1] for r in rows], pa.string())})
    pq.write_table(table, path)


def calibration_pairs() -> list[tuple[str, str]]:
    count = len(PARAPHRASES)
    pairs = []
    for i, (question, paraphrase) in enumerate(PARAPHRASES):
        pairs += [(question, paraphrase), (question, PARAPHRASES[(i + 1) % count][1]),
                  ("【求助】" + question + "！！", question)]
    pairs += [(single, PARAPHRASES[(7 * j) % count][0]) for j, single in enumerate(SINGLES)]
    return pairs


def write_calibration(path: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["text_a", "text_b"])
        writer.writerows(calibration_pairs())


def meaning_of() -> dict:
    """{normalized text: its meaning}: a question and its paraphrase (and their copies) share one; each
    single question has its own. The sample's truth, for labelling a review sheet in the README's example."""
    from transforms.normalize import normalize_text

    found = {}
    for i, texts in enumerate(PARAPHRASES):
        for text in texts:
            found[normalize_text(text)] = found[normalize_text("【求助】" + text + "！！")] = i  # and its copies
    for j, single in enumerate(SINGLES):
        found[normalize_text(single)] = len(PARAPHRASES) + j
    return found


def label_sheet(sheet: str, labelled: str) -> None:
    """Fills the label column of a `qdedup review` sheet from the sample's truth (`meaning_of`): 1 for the
    same meaning, 0 for another, blank for a text the sample does not know."""
    from transforms.normalize import normalize_text

    meaning = meaning_of()
    with open(sheet, encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        a, b = meaning.get(normalize_text(row["text_a"])), meaning.get(normalize_text(row["text_b"]))
        row["label"] = "" if a is None or b is None else str(int(a == b))
    with open(labelled, "w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["label"], lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--label"]:  # python samples/make_sample.py --label SHEET LABELLED
        label_sheet(sys.argv[2], sys.argv[3])
        sys.exit(0)
    here = os.path.dirname(os.path.abspath(__file__))
    target = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "questions.parquet")
    write_sample(target)
    print(f"wrote {len(build_rows())} rows to {target}")
    calibration = os.path.join(os.path.dirname(here), "transforms", "calibration_pairs.csv")
    write_calibration(calibration)
    print(f"wrote {len(calibration_pairs())} calibration pairs to {calibration}")
